"""Every promise of the README and the protocol has a test that names it.

The error codes and close codes of docs/protocol.md and the ``VF_`` settings of both documents
are read from the documents themselves; each must be referred to by some test (the code as a
string, the close code as a number, the setting by its ``VF_`` name or its settings field), so a
new promise cannot land without one.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "docs" / "protocol.md")
TESTS = ROOT / "tests"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


def error_codes() -> set[str]:
    table = _section((ROOT / "docs" / "protocol.md").read_text(), "## Errors and close codes")
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE))


def close_codes() -> set[int]:
    found: set[int] = set()
    for doc in DOCS:
        found |= {int(code) for code in re.findall(r"\b(1\d{3})\b", doc.read_text())}
    # Codes a client may see without the server sending them (lost connection, proxies) are
    # the network's, not the server's promise.
    return {c for c in found if 1000 <= c <= 1015} - {1001, 1006}


# Promises that no test names yet, each with why. The list may only shrink: a name on it that a
# test does refer to fails ``test_the_lists_of_exceptions_are_current``.
NO_INPUT_CAUSES_IT = {
    "internal": "an unexpected server error: by design no client input leads to it",
}
AWAITING_A_TEST = {
    # Model and engine knobs whose effect needs a second fleet (or a second model) to observe.
    "VF_LLM_FIRST_CLAUSE_CHARS",
    "VF_LLM_TIMEOUT_S",
    "VF_LOG_LEVEL",
    "VF_STT_CPU_THREADS",
    "VF_STT_END_SILENCE_S",
    "VF_STT_MODEL",
    "VF_STT_PARTIAL_INTERVAL_S",
    "VF_STT_VAD_THRESHOLD",
    "VF_TTS_LANG",
    "VF_TTS_MODEL",
    "VF_TTS_SPEED",
    "VF_TTS_VOICES",
}


def settings_named() -> set[str]:
    return {name for doc in DOCS for name in re.findall(r"\bVF_[A-Z0-9_]+\b", doc.read_text())}


@lru_cache(maxsize=1)
def sources_of_tests() -> str:
    return "\n".join(
        path.read_text()
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != Path(__file__).resolve()
    )


def refers_to_setting(name: str, sources: str) -> bool:
    field = name.removeprefix("VF_").lower()
    return bool(
        re.search(rf"\b{name}\b", sources)
        or re.search(rf"(\.{field}\b|\b{field}=|[\"']{field}[\"'])", sources)
    )


def refers_to_code(code: str, sources: str) -> bool:
    return bool(re.search(rf"[\"']{code}[\"']", sources))


def test_the_lists_of_exceptions_are_current() -> None:
    sources = sources_of_tests()
    stale = sorted(
        [c for c in NO_INPUT_CAUSES_IT if refers_to_code(c, sources)]
        + [n for n in AWAITING_A_TEST if refers_to_setting(n, sources)]
    )
    assert not stale, f"tested now: take them off the lists of exceptions: {stale}"
    assert set(NO_INPUT_CAUSES_IT) <= error_codes()
    assert settings_named() >= AWAITING_A_TEST


def test_the_documents_are_read() -> None:
    # The parsing itself must find what is plainly there.
    assert {"busy", "unauthorized", "stt_unavailable", "internal"} <= error_codes()
    assert {1000, 1003, 1008, 1009, 1011, 1012, 1013} <= close_codes()
    assert {"VF_AUTH_TOKEN", "VF_MAX_SESSION_S", "VF_TTS_CONCURRENCY"} <= settings_named()


def test_every_error_code_has_a_test() -> None:
    sources = sources_of_tests()
    untested = sorted(
        code
        for code in error_codes() - set(NO_INPUT_CAUSES_IT)
        if not refers_to_code(code, sources)
    )
    assert not untested, f"error codes promised in docs/protocol.md with no test: {untested}"


def test_every_close_code_has_a_test() -> None:
    sources = sources_of_tests()
    untested = sorted(code for code in close_codes() if not re.search(rf"\b{code}\b", sources))
    assert not untested, f"close codes promised in the docs with no test: {untested}"


def test_every_setting_has_a_test() -> None:
    sources = sources_of_tests()
    untested = sorted(
        name for name in settings_named() - AWAITING_A_TEST if not refers_to_setting(name, sources)
    )
    assert not untested, f"VF_ settings promised in the docs with no test: {untested}"
