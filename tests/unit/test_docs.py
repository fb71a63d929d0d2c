"""The README is the front door: every setting must be documented there."""

from __future__ import annotations

import tomllib
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


def test_the_ci_run_includes_the_slow_suites() -> None:
    """Soak, chaos and load suites are marked ``slow`` so they can be left out of a quick local
    run; nothing may leave them out of CI silently (addopts, a conftest, the test scripts)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    addopts = str(pyproject["tool"]["pytest"]["ini_options"].get("addopts", ""))
    places = [
        addopts,
        (ROOT / ".ci" / "run").read_text(),
        (ROOT / "scripts" / "test.sh").read_text(),
    ]
    places += [path.read_text() for path in (ROOT / "tests").rglob("conftest.py")]
    for text in places:
        assert "not slow" not in text and "skip_slow" not in text
