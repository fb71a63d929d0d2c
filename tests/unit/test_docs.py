"""The README is the front door: every setting must be documented there."""

from __future__ import annotations

from pathlib import Path

from fleet.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"VF_{name.upper()}"
        for name in Settings.model_fields
        if f"`VF_{name.upper()}`" not in readme
    ]
    assert not missing, f"README.md does not document {missing}"


def test_the_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()
