"""`voicefleet audit` decides from pip-audit's JSON report: what it could not audit fails the
audit, an advisory fails it unless docs/security.md accepts it with a reason."""

from __future__ import annotations

from typing import Any

from voicefleet.audit import SECURITY, accepted_advisories, unaccepted_findings, unaudited


def report(*dependencies: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(dependencies), "fixes": []}


VULNERABLE = {
    "name": "somepkg",
    "version": "1.0",
    "vulns": [
        {"id": "PYSEC-2099-1", "fix_versions": ["1.1"], "aliases": ["CVE-2099-1"]},
    ],
}


def test_an_audit_that_could_not_look_a_release_up_is_not_done() -> None:
    skipped = {"name": "numpy", "version": "2.0.0", "skip_reason": "Dependency not found on PyPI"}
    reason = unaudited(
        report(skipped, {"name": "voicefleet", "version": "0.1.0", "skip_reason": "x"})
    )
    assert reason is not None and "1 of 2" in reason and "numpy" in reason
    assert unaudited(report({"name": "voicefleet", "version": "0.1.0", "skip_reason": "x"})) is None


def test_an_advisory_fails_the_audit_unless_accepted_by_id_or_alias() -> None:
    assert unaccepted_findings(report(VULNERABLE), {}) == ["somepkg 1.0: PYSEC-2099-1 (1.1)"]
    assert unaccepted_findings(report(VULNERABLE), {"CVE-2099-1": "a reason"}) == []


def test_accepted_advisories_are_read_from_the_table_with_their_reasons() -> None:
    text = (
        "### Accepted advisories\n\n| advisory | package | reason |\n| --- | --- | --- |\n"
        "| `CVE-2099-1` | somepkg | only reachable through a feature we never call |\n\n## Next\n"
    )
    assert accepted_advisories(text) == {
        "CVE-2099-1": "only reachable through a feature we never call"
    }


def test_security_doc_gives_a_reason_for_each_accepted_advisory() -> None:
    for advisory, reason in accepted_advisories(SECURITY.read_text()).items():
        assert len(reason) > 20, advisory
