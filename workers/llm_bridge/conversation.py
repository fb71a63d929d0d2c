"""Turns Redis history into the chat messages the model sees. Pure, so it is unit-tested."""

from __future__ import annotations

from collections.abc import Sequence

from fleet.state import Exchange

INTERRUPTED_MARK = " [interrupted by the user]"


def build_messages(
    system_prompt: str, history: Sequence[Exchange], user_text: str
) -> list[dict[str, str]]:
    # llama.cpp's server answers HTTP 500 to the "developer" role, so the prompt is "system".
    messages = [{"role": "system", "content": system_prompt}]
    for exchange in history:
        spoken = exchange.assistant.strip()
        if not spoken and not exchange.interrupted:
            # A turn that failed to produce a reply: leave it out, so that roles keep alternating
            # (some chat templates reject two user messages in a row).
            continue
        if exchange.interrupted:
            spoken = f"{spoken}{INTERRUPTED_MARK}".strip()
        messages.append({"role": "user", "content": exchange.user})
        messages.append({"role": "assistant", "content": spoken})
    messages.append({"role": "user", "content": user_text})
    return messages
