"""No start path writes under the models directory: containers mount it read-only.

The check runs in a private mount namespace (``unshare -m``, needs root) where the assembled model
files are bind-mounted read-only, exactly as an image started with ``readOnlyRootFilesystem`` sees
them. Without the fix, ``voicefleet models --check`` rewrote ``.manifest.json`` and died with
``OSError: [Errno 30] Read-only file system``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from fleet.settings import Settings
from voicefleet.models import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
VOICEFLEET = Path(sys.executable).with_name("voicefleet")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` with its size and mtime: any write shows up as a difference."""
    found = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def _run_read_only(
    models: Path, mountpoint: Path, *commands: str
) -> subprocess.CompletedProcess[str]:
    """Run shell `commands` with `models` bind-mounted read-only at `mountpoint`."""
    assert os.geteuid() == 0, "this test needs root for a mount namespace (CI runs as root)"
    script = " && ".join(
        [
            f"mount --bind {shlex.quote(str(models))} {shlex.quote(str(mountpoint))}",
            f"mount -o remount,bind,ro {shlex.quote(str(mountpoint))}",
            *commands,
        ]
    )
    env = {**os.environ, "VF_MODELS_DIR": str(mountpoint), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_models_check_and_assemble_leave_a_read_only_directory_alone(tmp_path: Path) -> None:
    models = Settings().models_dir
    assert (models / MANIFEST_NAME).is_file(), f"no assembled models in {models}: run bootstrap"
    mountpoint = tmp_path / "models"
    mountpoint.mkdir()
    before = _snapshot(models)

    result = _run_read_only(
        models,
        mountpoint,
        # Proves the mount really is read-only, so the checks below mean something.
        f"! touch {shlex.quote(str(mountpoint / 'probe'))} 2>/dev/null",
        f"{VOICEFLEET} models --check",
        # A plain run on a complete directory has nothing to do, so it writes nothing either.
        f"{VOICEFLEET} models",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all model files verified" in result.stderr
    assert _snapshot(models) == before
