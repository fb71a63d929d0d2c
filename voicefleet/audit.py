"""A dependency vulnerability audit: pip-audit over the installed packages (`voicefleet audit`).

pip-audit asks the package index's advisory data about every installed release. The audit fails
(exit 1) on an advisory that docs/security.md's "Accepted advisories" table does not accept with
its reason, and fails saying why (exit 2) when the advisory data cannot be reached: an audit that
did not happen never passes. It is a command, not part of the test suite, because the machines
the suite runs on cannot reach that data (docs/security.md, "Dependency audit").
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

SECURITY = Path(__file__).resolve().parents[1] / "docs" / "security.md"
# Installed, but not from the package index: nothing to ask it about.
NOT_ON_THE_INDEX = frozenset({"voicefleet"})


def pip_audit(*paths: Path) -> dict[str, Any]:
    """pip-audit's JSON report on the distributions installed under ``paths`` (default: this
    environment's site-packages)."""
    argv = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    for path in paths or (Path(sysconfig.get_paths()["purelib"]),):
        argv += ["--path", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=840, check=False)
    # 0: nothing found; 1: advisories found. Anything else is pip-audit failing.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"pip-audit failed: {result.stderr[-3000:]}")
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


def main() -> None:
    report = pip_audit()
    incomplete = unaudited(report)
    if incomplete is not None:
        print(f"voicefleet audit: not done: {incomplete}", file=sys.stderr)
        raise SystemExit(2)
    findings = unaccepted_findings(report, accepted_advisories(SECURITY.read_text()))
    if findings:
        print("known vulnerabilities (bump, or accept in docs/security.md):", file=sys.stderr)
        print("\n".join(findings), file=sys.stderr)
        raise SystemExit(1)
    print(f"voicefleet audit: {len(report['dependencies'])} distributions, no unaccepted advisory")
