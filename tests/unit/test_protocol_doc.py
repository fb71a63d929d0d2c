"""docs/protocol.md is the client's contract: its error and close code tables list exactly what
the server sends (an ``error`` event can only carry an ErrorCode, a close only a CloseCode)."""

from __future__ import annotations

import re
from pathlib import Path

from fleet.errors import ErrorCode
from gateway.protocol import CLOSES_WITH, CloseCode

PROTOCOL = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def table(header: str) -> list[list[str]]:
    """The body rows of the table whose header line is ``header``, as lists of cells."""
    lines = PROTOCOL.splitlines()
    rows: list[list[str]] = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


ERRORS = table("| code | when | connection |")
CLOSES = table("| close code | meaning |")


def test_the_error_table_lists_every_error_code_once() -> None:
    listed = [code.strip("`") for code, _, _ in ERRORS]
    assert sorted(listed) == sorted(ErrorCode)


def test_the_error_table_gives_the_close_code_each_error_is_sent_with() -> None:
    documented = {}
    for code, _, connection in ERRORS:
        close = re.search(r"\*\*(\d{4})\*\*", connection)
        documented[code.strip("`")] = int(close.group(1)) if close else None
    assert documented == CLOSES_WITH


def test_the_close_code_table_lists_every_close_code_once() -> None:
    assert sorted(int(code) for code, _ in CLOSES) == sorted(CloseCode)


def test_the_close_code_table_names_the_errors_that_close_with_each_code() -> None:
    for close, meaning in CLOSES:
        named = {word for word in re.findall(r"`(\w+)`", meaning) if word in set(ErrorCode)}
        assert named == {code for code, then in CLOSES_WITH.items() if then == int(close)}, close


def test_the_browser_page_explains_every_error_code_in_words() -> None:
    page = (Path(__file__).resolve().parents[2] / "gateway" / "static" / "app.js").read_text()
    start = page.index("const ERROR_TEXT = {")
    explained = page[start : page.index("};", start)]
    assert sorted(re.findall(r"^  (\w+): '", explained, re.MULTILINE)) == sorted(ErrorCode)
