"""Records what the user heard of each turn: in the session's history, which the LLM bridge reads
to build the next prompt, and in the conversation log ``vf.transcripts``."""

from __future__ import annotations

from fleet.contracts import ConversationEntry
from fleet.state import Exchange, SessionStore
from fleet.topology import Bus
from gateway.turns import Heard


class History:
    def __init__(self, store: SessionStore, bus: Bus, session_id: str) -> None:
        self._store = store
        self._bus = bus
        self._session_id = session_id

    async def record(self, heard: Heard) -> None:
        await self._store.record_exchange(
            self._session_id,
            Exchange(heard.user_text, heard.reply, heard.interrupted),
            replaces_last=heard.correction,
        )
        # A correction supersedes the turn's assistant entry only; the user said the same.
        if not heard.correction:
            await self._bus.publish(
                ConversationEntry(
                    self._session_id, heard.turn, "user", heard.user_text, heard.interrupted
                )
            )
        await self._bus.publish(
            ConversationEntry(
                self._session_id, heard.turn, "assistant", heard.reply, heard.interrupted
            )
        )
