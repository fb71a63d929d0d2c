"""Generated bad input for the fuzz and soak tests: client messages, bus deliveries, and what the
documents promise in answer to them.

What counts as a right answer is read from docs/protocol.md (its table of error codes with the
close code each one ends the connection with, and its table of close codes), so the tests follow
the documented contract rather than the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from fleet.contracts import MESSAGE_TYPES, ContractError, decode, encode
from fleet.errors import ErrorCode
from fleet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
T = TypeVar("T")
LIMITS = Settings()  # the fleets under test run with the default limits
# The WebSocket layer of the gateway reads no frame over this (gateway/app.py, ws_max_size).
TRANSPORT_LIMIT = max(1 << 20, 4 * max(LIMITS.max_frame_bytes, LIMITS.max_text_bytes))

# Reproducible in CI: the same generated inputs on every run, nothing remembered between runs.
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking against live processes: bounded time
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


# --- what the documents promise -------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


def documented_errors() -> dict[str, int | None]:
    """Each documented error code and the close code it ends the connection with (None: the
    connection stays open)."""
    table = _section(PROTOCOL.read_text(), "## Errors and close codes")
    found: dict[str, int | None] = {}
    for code, connection in re.findall(
        r"^\| `([a-z_]+)` \|.*\| ([^|]+) \|$", table, flags=re.MULTILINE
    ):
        closed = re.search(r"\*\*(\d{4})\*\*", connection)
        found[code] = int(closed.group(1)) if closed else None
    return found


def documented_close_codes() -> set[int]:
    table = _section(PROTOCOL.read_text(), "## Errors and close codes")
    return {int(code) for code in re.findall(r"^\| (\d{4}) \|", table, flags=re.MULTILINE)}


# --- client messages --------------------------------------------------------------------------

FrameKind = Literal["text", "binary", "raw_text"]


class Frame:
    """One WebSocket message a client sends: a text frame, a binary frame, or a text frame whose
    payload is not UTF-8 (``raw_text``)."""

    __slots__ = ("data", "kind")

    def __init__(self, kind: FrameKind, data: str | bytes) -> None:
        self.kind = kind
        self.data = data

    def __repr__(self) -> str:  # a failing example prints readably, however large its frames
        return f"Frame({self.kind!r}, {len(self.data)} long: {self.data[:60]!r})"

    @property
    def refused_by_transport(self) -> bool:
        """Refused by the WebSocket layer before the gateway sees it (not UTF-8, or too large)."""
        return self.kind == "raw_text" or self.over_transport_limit

    @property
    def over_transport_limit(self) -> bool:
        """Larger than the WebSocket layer reads (1 MiB): refused before the gateway sees it."""
        return len(self.data) > TRANSPORT_LIMIT


VALID_START: dict[str, Any] = {
    "type": "start",
    "format": "pcm_s16le",
    "sampleRate": 16000,
    "channels": 1,
    "frameDurationMs": 100,
}

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _maybe(valid: Any, other: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    return st.just(valid) | other


_start_fields = st.fixed_dictionaries(
    {
        "format": _maybe("pcm_s16le", st.sampled_from(["opus", "PCM_S16LE", "", "pcm_f32le"])),
        "sampleRate": _maybe(16000, st.sampled_from([8000, 16000.0, 16001, 0, -16000, True])),
        "channels": _maybe(1, st.sampled_from([0, 2, True, 1.0, "1"])),
    },
    optional={
        "frameDurationMs": json_values,
        "sessionId": _maybe(uuid.uuid4().hex, json_values),
        "resumeSecret": _maybe("x" * 43, json_values),
        "voice": _maybe("af_heart", json_values),
        "language": _maybe("en", json_values),
        "token": json_values,
        "extra": json_values,
    },
)
starts = _start_fields.map(lambda fields: {"type": "start", **fields})

_text_json = (
    starts
    | st.just(VALID_START)
    | st.fixed_dictionaries({"type": st.just("stop")}, optional={"extra": json_values})
    | st.dictionaries(st.text(max_size=12), json_values, max_size=4).map(
        lambda d: {k: v for k, v in d.items() if k != "type"}
    )
    | st.fixed_dictionaries({"type": json_values})
    | json_values
).map(lambda value: json.dumps(value, allow_nan=True))


_text = (
    _text_json
    | st.text(max_size=200)
    | st.integers(min_value=1, max_value=20_000).map(lambda n: "[" * n + "]" * n)
    | st.integers(min_value=1, max_value=3_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    | st.integers(min_value=LIMITS.max_text_bytes - 16, max_value=LIMITS.max_text_bytes + 16).map(
        lambda n: json.dumps({"type": "stop", "pad": "y" * n})
    )
    | st.sampled_from([1 << 16, (1 << 20) + 1]).map(lambda n: "z" * n)
)

_binary_length = st.one_of(
    st.just(0),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=LIMITS.max_frame_bytes + 64),
    st.sampled_from([3200, LIMITS.max_frame_bytes, LIMITS.max_frame_bytes + 1, (1 << 20) + 2]),
)


@st.composite
def binary_frames(draw: st.DrawFn) -> Frame:
    length = draw(_binary_length)
    fill = draw(st.sampled_from(["zero", "random", "loud"]))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    if fill == "zero":
        data = bytes(length)
    elif fill == "loud":
        data = (b"\xff\x7f\x01\x80" * (length // 4 + 1))[:length]
    else:
        data = random.Random(seed).randbytes(length)
    return Frame("binary", data)


_raw_text = st.binary(min_size=1, max_size=64).filter(lambda b: not _is_utf8(b)) | st.just(
    b'{"type": "stop", "x": "\xff"}'
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


frames = (
    _text.map(lambda t: Frame("text", t))
    | binary_frames()
    | _raw_text.map(lambda b: Frame("raw_text", b))
)


@st.composite
def conversations(draw: st.DrawFn) -> list[Frame]:
    """What one client sends on one connection, in order: often a valid start first, then
    anything (audio before start, a second start, stop in the middle, ...)."""
    opening = [Frame("text", json.dumps(VALID_START))] if draw(st.booleans()) else []
    middle = draw(
        st.lists(
            frames | st.just(Frame("binary", bytes(3200))) | st.just(Frame("binary", b"\x01")),
            min_size=1,
            max_size=8,
        )
    )
    return opening + middle


# --- what the protocol promises for a message, as far as the documents tell ---------------------

Verdict = Literal["valid", "invalid", "unknown", "stop"]


def judge(frame: Frame, started: bool | None) -> tuple[Verdict, bool | None]:
    """Whether the document says ``frame`` is refused (``invalid``), accepted (``valid``) or ends
    the session (``stop``) on a connection in state ``started`` (None: not known), and the state
    after it. ``unknown``: the documents leave it open, or it depends on limits."""
    if frame.kind == "raw_text":
        return "invalid", started
    if frame.kind == "binary":
        size = len(frame.data)
        if size > LIMITS.max_frame_bytes or size % 2 or started is False:
            return "invalid", started
        if started and size:
            return "valid", started
        return "unknown", started
    assert isinstance(frame.data, str)
    if len(frame.data.encode()) > LIMITS.max_text_bytes:
        return "invalid", started
    try:
        data = json.loads(frame.data)
    except (ValueError, RecursionError):
        return "invalid", started
    if not isinstance(data, dict) or data.get("type") not in ("start", "stop"):
        return "invalid", started
    if data["type"] == "stop":
        return "stop", started
    if started:
        return "invalid", started  # already_started
    if started is None:
        return "unknown", None
    if data == VALID_START:
        return "valid", True
    for key in ("format", "sampleRate", "channels"):
        if key in data and not _same_json(data[key], VALID_START[key]):
            return "invalid", started
    return "unknown", None


def _same_json(value: Any, expected: Any) -> bool:
    """Equal as JSON values: 16000.0 is the number 16000, but ``true`` is not the number 1."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    return bool(value == expected)


@dataclass
class Expectation:
    invalid: int = 0  # messages the server must answer with an error, if it processed them all
    all_valid: bool = True  # nothing but valid messages: no error may come back
    opened: bool = False  # a valid start came first: `ready` must come back
    verdicts: list[Verdict] = field(default_factory=list)


def expect(conversation: list[Frame]) -> Expectation:
    """What the server owes a conversation that ends with ``stop`` after these messages."""
    expectation = Expectation()
    started: bool | None = False
    for index, frame in enumerate(conversation):
        verdict, started = judge(frame, started)
        expectation.verdicts.append(verdict)
        if index == 0 and verdict == "valid" and started:
            expectation.opened = True
        if verdict == "stop":
            break
        expectation.invalid += verdict == "invalid"
        expectation.all_valid &= verdict == "valid"
    return expectation


# --- bus deliveries ---------------------------------------------------------------------------

_kinds = st.sampled_from(sorted(MESSAGE_TYPES)) | st.none() | st.text(max_size=20)
_ids = (
    st.just("")
    | st.none()
    | st.text(max_size=40)
    | st.uuids().map(lambda u: u.hex)
    | st.just("x" * 255)
)
_header_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.lists(st.integers(min_value=-1000, max_value=1000) | st.text(max_size=8), max_size=3)
)
_header_names = st.sampled_from(
    ["turn", "seq", "sentence", "chunk", "last", "replayed", "stream_id", "text", "x-death"]
) | st.text(min_size=1, max_size=12)
headers = st.dictionaries(_header_names, _header_values, max_size=6)


def mostly(
    right: st.SearchStrategy[T], other: st.SearchStrategy[Any] = json_values
) -> st.SearchStrategy[Any]:
    """Two times in three a value of the right shape, else one of ``other``."""
    return st.integers(0, 2).flatmap(lambda pick: right if pick else other)


def _field_values(name: str, stale: bool) -> st.SearchStrategy[Any]:
    """Values for a contract field, mostly of the right shape and wrong in value."""
    if name in ("turn", "seq", "sentence", "chunk", "index", "upto_seq", "sentences"):
        # Live: numbers near a new session's own (turn 1, sentence 0, ...) as often as any.
        return mostly(st.integers(max_value=-1) if stale else st.integers(-1, 3) | st.integers())
    if name in ("final", "reoffer", "last", "replayed", "interrupted"):
        return mostly(st.booleans())
    if name == "deadline":
        return mostly(st.floats() | st.integers())
    return mostly(st.text(max_size=300))


@st.composite
def contract_bodies(draw: st.DrawFn, kind: str | None, stale: bool) -> bytes:
    """A body for a message kind: a JSON object of its fields (values right-shaped or not,
    fields missing or extra), or any other bytes."""
    cls = MESSAGE_TYPES.get(kind or "")
    shape = draw(st.sampled_from(["fields", "fields", "fields", "json", "bytes"]))
    if shape == "bytes" or (cls is None and shape == "fields"):
        return draw(st.binary(max_size=200))
    if shape == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    assert cls is not None
    body: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:
        if name in ("session_id", "pcm") or draw(st.integers(0, 9)) == 0:
            continue  # the session id travels as the correlation id, the pcm as the body
        body[name] = draw(_field_values(name, stale))
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return json.dumps(body, allow_nan=True).encode()


@dataclass(frozen=True)
class Delivery:
    """One message published straight onto the broker, as a buggy or hostile process might."""

    kind: str | None
    session_id: str | None
    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    priority: int | None

    def __repr__(self) -> str:
        return (
            f"Delivery({self.kind!r}, session={self.session_id!r}, body={self.body[:120]!r}"
            f"{'...' if len(self.body) > 120 else ''}, headers={self.headers!r})"
        )

    def outcome(self, expects: str) -> Literal["dead_letter", "consume"]:
        """What the contract says of this delivery on a work queue that takes ``expects``."""
        try:
            message = decode(self.kind, self.session_id, self.body, dict(self.headers))
        except ContractError:
            return "dead_letter"
        return "consume" if expects == message.KIND else "dead_letter"

    def surely_malformed(self) -> bool:
        """The contract refuses it whatever the broker does to its headers on the way (a kind
        whose fields travel in the body, or no kind the contract knows)."""
        cls = MESSAGE_TYPES.get(self.kind or "")
        if cls is not None and getattr(cls, "PAYLOAD", None):
            return False
        try:
            decode(self.kind, self.session_id, self.body, dict(self.headers))
        except ContractError:
            return True
        return False


@st.composite
def deliveries(
    draw: st.DrawFn,
    kinds: st.SearchStrategy[str | None],
    session_ids: st.SearchStrategy[str | None],
    *,
    stale: bool = True,
    audio: bool = False,
) -> Delivery:
    kind = draw(kinds)
    cls = MESSAGE_TYPES.get(kind or "")
    if audio or (cls is not None and getattr(cls, "PAYLOAD", None)):
        # A binary payload: the body is audio, the fields are headers. Quiet audio, mostly, so the
        # recognizer is not kept busy with noise.
        length = draw(st.integers(min_value=0, max_value=6400))
        body = bytes(length) if draw(st.integers(0, 3)) else random.Random(length).randbytes(length)
    else:
        body = draw(contract_bodies(kind, stale))
    return Delivery(
        kind=kind,
        session_id=draw(session_ids),
        body=body,
        headers=draw(headers),
        content_type=draw(st.none() | st.sampled_from(["application/json", "text/plain", "x"])),
        priority=draw(st.none() | st.integers(min_value=0, max_value=255)),
    )


_by_type: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-1, 3) | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "bool": st.booleans(),
    "str": st.sampled_from(list(ErrorCode)).map(str) | st.text(max_size=60),
    "bytes": st.integers(0, 800).map(bytes) | st.binary(max_size=801),
    # Deadlines: now-ish Unix times, and any other float (negative, huge, infinite, NaN).
    "float": st.floats(min_value=1.7e9, max_value=2.1e9) | st.floats(),
}
_by_type["ErrorCode"] = _by_type["str"]  # any code, documented or not
_by_type["int | None"] = st.none() | _by_type["int"]


@st.composite
def valid_shaped(draw: st.DrawFn, kinds: list[str]) -> Delivery:
    """A message that follows the contract, encoded as the fleet encodes it, with any values
    (turn numbers near a live session's own, any codes, texts and audio): for the session named
    "victim" (the caller puts the real id in)."""
    cls = MESSAGE_TYPES[draw(st.sampled_from(kinds))]
    values = {
        spec.name: draw(_by_type[str(spec.type)])
        for spec in dataclasses.fields(cls)
        if spec.name != "session_id"
    }
    envelope = encode(cls(session_id="victim", **values))
    return Delivery(
        envelope.kind, "victim", envelope.body, envelope.headers, envelope.content_type, None
    )


any_kind = _kinds
any_session = _ids
