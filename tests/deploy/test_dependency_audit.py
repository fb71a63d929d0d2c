"""A dependency vulnerability audit (issue 10, item 8): pip-audit over the installed packages.

pip-audit asks the package index's advisory data about every installed release. Where that data
cannot be reached, the test fails saying so (it never passes on an audit that did not happen),
unless the suite is opted out by name (``VF_TEST_OPT_OUT=audit``, tests/prerequisites.py).
Advisories found are failures unless docs/security.md accepts them, each with its reason, in its
"Accepted advisories" table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import REPO
from tests.prerequisites import opted_out, require

SECURITY = REPO / "docs" / "security.md"
# Installed, but not from the package index: nothing to ask it about.
NOT_ON_THE_INDEX = frozenset({"voicefleet"})

pytestmark = [pytest.mark.timeout(900)]


def pip_audit(*paths: Path) -> dict[str, Any]:
    """pip-audit's JSON report on the distributions installed under ``paths`` (default: this
    environment's site-packages)."""
    argv = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    for path in paths or (Path(sysconfig.get_paths()["purelib"]),):
        argv += ["--path", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=840, check=False)
    # 0: nothing found; 1: advisories found. Anything else is pip-audit failing.
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def unaudited(report: dict[str, Any]) -> str | None:
    """Why the audit is not complete (releases the advisory data said nothing about), or None."""
    dependencies = report["dependencies"]
    skipped = [
        d for d in dependencies if d.get("skip_reason") and d["name"] not in NOT_ON_THE_INDEX
    ]
    if not skipped:
        return None
    names = ", ".join(d["name"] for d in skipped[:8])
    return (
        f"pip-audit could not audit {len(skipped)} of {len(dependencies)} installed "
        f"distributions ({names}{', ...' if len(skipped) > 8 else ''}): "
        f"{skipped[0]['skip_reason']}. The package index's advisory data for installed "
        "releases cannot be reached from here"
    )


def accepted_advisories(text: str) -> dict[str, str]:
    """docs/security.md's accepted advisories: id -> reason (table rows `| id | ... | reason |`)."""
    section = text.split("### Accepted advisories", 1)[1].split("\n#", 1)[0]
    accepted = {}
    for row in re.findall(r"^\|(.+)\|\s*$", section, re.M):
        cells = [cell.strip().strip("`") for cell in row.split("|")]
        if cells[0] and not set(cells[0]) <= {"-", " "} and cells[0] != "advisory":
            accepted[cells[0]] = cells[-1]
    return accepted


def unaccepted_findings(report: dict[str, Any], accepted: dict[str, str]) -> list[str]:
    found = []
    for dependency in report["dependencies"]:
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            if not ids & set(accepted):
                fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
                found.append(
                    f"{dependency['name']} {dependency['version']}: {vuln['id']} ({fixed})"
                )
    return found


def test_security_doc_gives_a_reason_for_each_accepted_advisory() -> None:
    for advisory, reason in accepted_advisories(SECURITY.read_text()).items():
        assert len(reason) > 20, advisory


def test_installed_dependencies_have_no_unaccepted_known_vulnerabilities() -> None:
    if opted_out("audit"):
        require("audit", "the audit asks the package index about every installed release")
    report = pip_audit()
    require("audit", unaudited(report))
    findings = unaccepted_findings(report, accepted_advisories(SECURITY.read_text()))
    assert not findings, "known vulnerabilities (bump, or accept in docs/security.md):\n" + (
        "\n".join(findings)
    )
