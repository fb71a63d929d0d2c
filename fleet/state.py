"""Session state that must outlive any one process, in Redis.

Per session: a hash (who opened it, when, the hash of its resume secret), the turn counter, and
the conversation history.
The turn counter is what cancels stale work: whoever bumps it also publishes a notice on one
pub/sub channel, and every worker keeps a :class:`TurnWatch` that learns of it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from fleet.settings import Settings

log = structlog.get_logger(__name__)


def connect_redis(settings: Settings) -> redis.Redis:
    # A blocking pool waits for a free connection under fan-out instead of raising.
    # A command on a connection that a Redis restart broke is retried on a fresh one; while
    # Redis is down, commands fail within about a second (refused, or the connect timeout).
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        # No CLIENT SETINFO on connect: the per-role Redis users may run only what their role
        # needs (docs/security.md, "Deployment").
        lib_name=None,
        lib_version=None,
        max_connections=64,
        timeout=10,
        decode_responses=True,
        socket_connect_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return redis.Redis(connection_pool=pool)


def key_prefix(namespace: str) -> str:
    """What every Redis key and channel of a fleet starts with (then ``:``)."""
    return f"{namespace}:vf" if namespace else "vf"


def secret_hash(secret: str) -> str:
    """What Redis keeps of a resume secret: a random 256-bit secret needs no slow, salted hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Exchange:
    """One turn of conversation: what the user said and what the assistant actually spoke."""

    user: str
    assistant: str
    interrupted: bool = False


class SessionStore:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._prefix = key_prefix(settings.namespace)

    def _key(self, session_id: str, part: str) -> str:
        return f"{self._prefix}:session:{session_id}:{part}"

    @property
    def turn_channel(self) -> str:
        return f"{self._prefix}:turns"

    async def open_session(
        self, session_id: str, gateway_id: str, stream_id: str, secret_digest: str
    ) -> bool:
        """Create the session or take it over with a new audio stream and resume secret.

        Returns True if the session already existed (a resume). The stream id recorded here is
        the only one whose lease an STT worker may hold; older streams' leases lapse. Only the
        secret given to this connection resumes the session from now on.
        """
        info = self._key(session_id, "info")
        ttl = self.settings.session_ttl_s
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(info)
            pipe.hsetnx(info, "created", f"{time.time():.3f}")
            pipe.hset(
                info,
                mapping={"gateway": gateway_id, "stream": stream_id, "secret": secret_digest},
            )
            pipe.expire(info, ttl)
            pipe.expire(self._key(session_id, "turn"), ttl)
            pipe.expire(self._key(session_id, "history"), ttl)
            existed, *_ = await pipe.execute()
        return bool(existed)

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self._key(session_id, "info")))

    async def owned_by(self, session_id: str, secret: str) -> bool:
        """Whether the session is known and ``secret`` is its current resume secret."""
        stored = await cast(
            Awaitable[str | None], self.redis.hget(self._key(session_id, "info"), "secret")
        )
        # Constant time, so the comparison's duration tells nothing of the stored hash.
        return stored is not None and hmac.compare_digest(stored, secret_hash(secret))

    async def current_stream(self, session_id: str) -> str | None:
        stream = await cast(
            Awaitable[str | None], self.redis.hget(self._key(session_id, "info"), "stream")
        )
        return stream or None

    async def stream_ended(self, session_id: str, stream_id: str) -> bool:
        """Whether the session is known and its current stream is another one (or none).

        A session Redis does not know at all is *not* ended by this test: Redis may have
        restarted without its data, and the gateway serving the session re-creates the record
        (:meth:`keep_alive`); a stream that is truly gone stops sending audio, and its holder
        releases it when the audio goes quiet.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self._key(session_id, "info"))
            pipe.hget(self._key(session_id, "info"), "stream")
            known, stream = await pipe.execute()
        return bool(known) and stream != stream_id

    async def keep_alive(
        self, session_id: str, gateway_id: str, stream_id: str, secret_digest: str
    ) -> bool:
        """A live connection's session: refresh its TTL, and re-create its record if it is gone.

        A re-created record keeps the connection's resume secret, so its client can still resume.

        Never changes the stream of a record that exists (a newer connection of the session may
        have taken it over). Returns True when the record had to be re-created.
        """
        info = self._key(session_id, "info")
        recreated = await cast(
            Awaitable[int],
            self.redis.eval(
                "local created = 0 "
                "if redis.call('EXISTS', KEYS[1]) == 0 then "
                "redis.call('HSET', KEYS[1], 'created', ARGV[1], 'gateway', ARGV[2], "
                "'stream', ARGV[3], 'secret', ARGV[5]) created = 1 end "
                "redis.call('EXPIRE', KEYS[1], ARGV[4]) "
                "redis.call('EXPIRE', KEYS[2], ARGV[4]) "
                "redis.call('EXPIRE', KEYS[3], ARGV[4]) "
                "return created",
                3,
                info,
                self._key(session_id, "turn"),
                self._key(session_id, "history"),
                f"{time.time():.3f}",
                gateway_id,
                stream_id,
                str(self.settings.session_ttl_s),
                secret_digest,
            ),
        )
        return bool(recreated)

    async def end_stream(self, session_id: str, stream_id: str) -> None:
        """The stream is over (client gone, or never served); its lease must not be held."""
        info = self._key(session_id, "info")
        # Compare-and-delete in one step, so a newer stream of the session is never touched.
        await cast(
            Awaitable[int],
            self.redis.eval(
                "if redis.call('HGET', KEYS[1], 'stream') == ARGV[1] then "
                "return redis.call('HDEL', KEYS[1], 'stream') end return 0",
                1,
                info,
                stream_id,
            ),
        )

    async def touch(self, session_id: str) -> None:
        ttl = self.settings.session_ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in ("info", "turn", "history"):
                pipe.expire(self._key(session_id, part), ttl)
            await pipe.execute()

    async def current_turn(self, session_id: str) -> int:
        value = await self.redis.get(self._key(session_id, "turn"))
        return int(value) if value is not None else 0

    async def next_turn(self, session_id: str) -> int:
        """Bump the turn: everything of the previous turn is stale from now on, everywhere."""
        key = self._key(session_id, "turn")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.settings.session_ttl_s)
            turn, _ = await pipe.execute()
        notice = json.dumps({"session": session_id, "turn": int(turn)})
        await cast(Awaitable[int], self.redis.publish(self.turn_channel, notice))
        return int(turn)

    async def cancel_turn(self, session_id: str, turn: int) -> bool:
        """Move the turn counter past ``turn`` if it is still the session's turn (a newer one,
        started by another connection of the session, is left alone). True if it was moved;
        the notice goes out as with :meth:`next_turn`."""
        key = self._key(session_id, "turn")
        moved = await cast(
            Awaitable[int | None],
            self.redis.eval(
                "if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then "
                "return nil end "
                "local turn = redis.call('INCRBY', KEYS[1], 1) "
                "redis.call('EXPIRE', KEYS[1], ARGV[2]) "
                "return turn",
                1,
                key,
                str(turn),
                str(self.settings.session_ttl_s),
            ),
        )
        if moved is None:
            return False
        notice = json.dumps({"session": session_id, "turn": int(moved)})
        await cast(Awaitable[int], self.redis.publish(self.turn_channel, notice))
        return True

    async def record_exchange(
        self, session_id: str, exchange: Exchange, *, replaces_last: bool = False
    ) -> None:
        """Append ``exchange``; with ``replaces_last`` it corrects the newest one instead."""
        key = self._key(session_id, "history")
        entry = json.dumps(dataclasses.asdict(exchange))
        async with self.redis.pipeline(transaction=True) as pipe:
            if replaces_last:
                pipe.rpop(key)
            pipe.rpush(key, entry)
            pipe.ltrim(key, -self.settings.history_turns, -1)
            pipe.expire(key, self.settings.session_ttl_s)
            await pipe.execute()

    async def history(self, session_id: str) -> list[Exchange]:
        raw = await cast(
            Awaitable[list[str]],
            self.redis.lrange(self._key(session_id, "history"), -self.settings.history_turns, -1),
        )
        exchanges = []
        for item in raw:
            data: dict[str, Any] = json.loads(item)
            exchanges.append(
                Exchange(data["user"], data["assistant"], bool(data.get("interrupted", False)))
            )
        return exchanges

    async def count_delivery(self, message_id: str) -> int:
        """How many times this job has been started (survives worker crashes)."""
        key = f"{self._prefix}:deliveries:{message_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 3600)
            count, _ = await pipe.execute()
        return int(count)

    async def delete_session(self, session_id: str) -> None:
        await self.redis.delete(*(self._key(session_id, p) for p in ("info", "turn", "history")))


class TurnWatch:
    """Tells a worker, as soon as the gateway bumps a session's turn, that older work is stale."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._latest: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, asyncio.Event]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="turn-watch")
        await self._subscribed.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def is_stale(self, session_id: str, turn: int) -> bool:
        """Ask Redis (authoritative) whether ``turn`` is no longer the session's current turn."""
        current = await self._store.current_turn(session_id)
        if current < self._latest.get(session_id, 0):
            # The counter went back: Redis lost it (a restart without persistence) and counts
            # from 0 again. Redis is the authority; what this watch remembers is void.
            log.warning("turn_counter_reset", session_id=session_id, turn=current)
            self._latest[session_id] = current
        self._note(session_id, current)
        return turn < current

    def superseded(self, session_id: str, turn: int) -> asyncio.Event:
        """An event that is set once a newer turn than ``turn`` is known for the session."""
        event = asyncio.Event()
        if self._latest.get(session_id, 0) > turn:
            event.set()
        else:
            self._waiters.setdefault(session_id, []).append((turn, event))
        return event

    def release(self, session_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(session_id)
        if waiters is None:
            return
        waiters[:] = [(t, e) for t, e in waiters if e is not event]
        if not waiters:
            del self._waiters[session_id]

    def _note(self, session_id: str, turn: int) -> None:
        if turn <= self._latest.get(session_id, 0):
            return
        self._latest[session_id] = turn
        waiters = self._waiters.get(session_id, [])
        for waited_turn, event in waiters:
            if waited_turn < turn:
                event.set()
        remaining = [(t, e) for t, e in waiters if not e.is_set()]
        if remaining:
            self._waiters[session_id] = remaining
        else:
            self._waiters.pop(session_id, None)
        if len(self._latest) > 100_000:
            # Only live sessions matter; drop the oldest half rather than grow without bound.
            for stale in list(self._latest)[: len(self._latest) // 2]:
                del self._latest[stale]

    async def _listen(self) -> None:
        while True:
            try:
                async with self._store.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._store.turn_channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        try:
                            notice = json.loads(message["data"])
                            self._note(str(notice["session"]), int(notice["turn"]))
                        except (ValueError, KeyError, TypeError):
                            log.warning("turn_notice_malformed", data=str(message["data"])[:200])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarts must not end the watch.
                log.warning("turn_watch_reconnecting", error=str(exc))
                await asyncio.sleep(1.0)


# --- what the TTS workers offer (docs/tts-providers.md, "What the workers offer") -------------


@dataclass(frozen=True, slots=True)
class ProviderOffer:
    """One provider of a TTS worker's list, as the worker last saw it."""

    label: str  # its VF_TTS_PROVIDERS entry: local, remote, openai, wyoming, elevenlabs
    engine: str  # what speaks: kokoro, piper, or the service's own name
    version: str
    health: str  # ok, down, refused, or unchecked
    detail: str = ""  # why it is down or refused
    voices: tuple[str, ...] = ()
    # Any name is spoken (with a default voice where the name is not the provider's own), so
    # `voices` is what it lists, not a limit.
    any_voice: bool = False


@dataclass(frozen=True, slots=True)
class TtsOffer:
    """What one TTS worker speaks with: its providers, and the one a sentence goes to now."""

    worker: str
    active: str
    providers: tuple[ProviderOffer, ...]

    @property
    def speaking(self) -> ProviderOffer | None:
        return next((p for p in self.providers if p.label == self.active), None)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TtsOffer:
        data: dict[str, Any] = json.loads(text)
        providers = tuple(
            ProviderOffer(
                str(p["label"]),
                str(p["engine"]),
                str(p["version"]),
                str(p["health"]),
                str(p.get("detail", "")),
                tuple(str(v) for v in p.get("voices", ())),
                bool(p.get("any_voice", False)),
            )
            for p in data["providers"]
        )
        return cls(str(data["worker"]), str(data["active"]), providers)


class TtsOffers:
    """The TTS workers' offers in Redis: one key per worker with a TTL the worker refreshes
    (a dead worker's offer expires), and a set naming the workers, so that a reader needs no
    scan of the key space."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self._prefix = key_prefix(settings.namespace)

    @property
    def index(self) -> str:
        return f"{self._prefix}:tts:offers"

    def _key(self, worker: str) -> str:
        return f"{self._prefix}:tts:offer:{worker}"

    async def publish(self, offer: TtsOffer, ttl_s: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(offer.worker), offer.to_json(), ex=ttl_s)
            pipe.sadd(self.index, offer.worker)
            pipe.expire(self.index, ttl_s)
            await pipe.execute()

    async def withdraw(self, worker: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(worker))
            pipe.srem(self.index, worker)
            await pipe.execute()

    async def current(self) -> list[TtsOffer]:
        """The offers of the workers alive now (their records not expired), by worker name."""
        workers = sorted(await cast(Awaitable[set[str]], self.redis.smembers(self.index)))
        if not workers:
            return []
        records = await cast(
            Awaitable[list[str | None]], self.redis.mget([self._key(w) for w in workers])
        )
        offers: list[TtsOffer] = []
        gone: list[str] = []
        for worker, record in zip(workers, records, strict=True):
            if record is None:
                gone.append(worker)
                continue
            try:
                offers.append(TtsOffer.from_json(record))
            except (ValueError, KeyError, TypeError):
                log.warning("tts_offer_malformed", worker=worker, data=record[:200])
        if gone:
            # A worker that re-publishes between the MGET and this SREM drops out of the index
            # until its next refresh (workers/tts/offer.py: within 5 s), which adds it back.
            await cast(Awaitable[int], self.redis.srem(self.index, *gone))
        return offers
