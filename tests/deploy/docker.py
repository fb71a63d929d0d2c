"""Docker for the deployment tests: the engine, a local base image, an offline image build.

Nothing here reaches an image registry or a package index from inside a build:

- ``dockerd`` is started if none answers, with ``--storage-driver=vfs --bridge=none
  --iptables=false``: no bridge exists, so every container runs on the host's network and all
  traffic stays on 127.0.0.1;
- the base image is Debian bookworm with Python 3.11 built by ``debootstrap`` and imported with
  ``docker import``, its root file system cached as a tarball under ~/.cache/voicefleet/docker;
- the wheels of every dependency are built on the host (``pip wheel``), and they, the assembled
  models and bootstrap's ``llama-server`` are linked into ``deploy/context``, so the build
  installs with ``PIP_NO_INDEX=1``, compiles nothing and only verifies the models.

scripts/bootstrap.sh --with-test-tools installs docker.io and debootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fleet.settings import Settings
from voicefleet.llm_server import server_binary

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicefleet"
DOCKER_CACHE = CACHE / "docker"
BASE_IMAGE = "voicefleet-local/python:3.11-bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
# The tag every rendered spec and compose name for the CPU image.
CPU_IMAGE = "voicefleet:0.1.0-cpu"
CONTEXT = REPO / "deploy" / "context"
LABEL = "io.voicefleet.test"
DOCKERD_START_S = 60.0
# Part of the wheel folder's stamp: raise it when the way the wheels are gathered changes.
WHEELS_RECIPE = 2


class DockerError(AssertionError):
    pass


def run(
    *argv: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        raise DockerError(f"{' '.join(argv)} exited {result.returncode}:\n{output}")
    return result


def _answers() -> bool:
    return run("docker", "info", "--format", "{{.ServerVersion}}", check=False).returncode == 0


def ensure_dockerd() -> None:
    """A Docker engine that answers; started here (vfs, no bridge, no iptables) if none does."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise DockerError("docker is not installed: run scripts/bootstrap.sh --with-test-tools")
    if _answers():
        return
    DOCKER_CACHE.mkdir(parents=True, exist_ok=True)
    log = (DOCKER_CACHE / "dockerd.log").open("ab")
    # Left running on purpose, like RabbitMQ and Redis: later tests and runs reuse it.
    subprocess.Popen(
        ["dockerd", "--storage-driver=vfs", "--bridge=none", "--iptables=false"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + DOCKERD_START_S
    while not _answers():
        if time.monotonic() > deadline:
            raise DockerError(f"dockerd did not answer in {DOCKERD_START_S} s; see {log.name}")
        time.sleep(0.5)


def image_exists(tag: str) -> bool:
    return run("docker", "image", "inspect", tag, check=False).returncode == 0


def ensure_base_image() -> str:
    """Debian bookworm + Python 3.11 as a local image, from a cached debootstrap tarball."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    tarball = DOCKER_CACHE / "bookworm-python3.tar"
    if not tarball.is_file():
        rootfs = DOCKER_CACHE / "rootfs.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        run(
            "nice", "-n", "10", "debootstrap", "--variant=minbase",
            f"--include={BASE_PACKAGES}", "bookworm", str(rootfs),
        )  # fmt: skip
        # Package lists and downloaded .debs have no place in an image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        run("tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), ".")
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    run("docker", "import", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def _link_tree(source: Path, dest: Path) -> None:
    """Mirror `source` into `dest` with hard links (no copy of ~1 GB of wheels and models)."""
    for path in source.rglob("*"):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def _link_llama_server(dest: Path) -> None:
    binary = server_binary()
    if binary is None:
        raise DockerError("no llama-server beside the venv's Python: run scripts/bootstrap.sh")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "llama-server"
    target.unlink(missing_ok=True)
    try:
        os.link(binary, target)
    except OSError:
        shutil.copy2(binary, target)


def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies: list[str] = project["dependencies"]
    return dependencies


def image_only_requirements(wheels: Path, python_version: str) -> list[str]:
    """Requirements of the wheels in `wheels` that hold on `python_version` but not on the
    host's Python, and that no wheel there provides yet."""
    present = {canonicalize_name(path.name.split("-")[0]) for path in wheels.glob("*.whl")}
    target = {
        "python_full_version": python_version,
        "python_version": ".".join(python_version.split(".")[:2]),
        "extra": "",
    }
    needed = []
    for path in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(path) as wheel:
            metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            lines = wheel.read(metadata).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.partition(":")[2].strip())
            marker = requirement.marker
            if marker is None or canonicalize_name(requirement.name) in present:
                continue
            if marker.evaluate(target) and not marker.evaluate({"extra": ""}):
                needed.append(str(requirement).split(";")[0].strip())
    return sorted(set(needed))


def prepare_context(base_image: str) -> None:
    """Wheels of every dependency and the assembled models, into deploy/context (git-ignored)."""
    wheels = DOCKER_CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stamp = wheels / ".pyproject.sha"
    recipe = (REPO / "pyproject.toml").read_bytes() + f"\nrecipe {WHEELS_RECIPE}".encode()
    wanted = hashlib.sha256(recipe).hexdigest()
    if not stamp.is_file() or stamp.read_text() != wanted:
        pip = [sys.executable, "-m", "pip"]
        links = ["--find-links", str(wheels)]
        run(*pip, "wheel", "-q", *links, "-w", str(wheels), str(REPO))
        run(*pip, "download", "-q", "--only-binary=:all:", *links,
            "-d", str(wheels), *_requirements(), "setuptools>=69")  # fmt: skip
        # The image's Python may need wheels the host's does not (environment markers such as
        # python_full_version < "3.11.3" for Debian's 3.11.2). `pip download --python-version`
        # does not evaluate markers for the target, so they are evaluated here.
        version = run(
            "docker", "run", "--rm", "--network", "host", base_image,
            "python", "-c", "import platform; print(platform.python_version())",
        ).stdout.strip()  # fmt: skip
        extra = image_only_requirements(wheels, version)
        if extra:
            run(*pip, "download", "-q", "--only-binary=:all:", *links, "-d", str(wheels),
                *extra)  # fmt: skip
        # The image installs voicefleet from its source, not from a wheel of this checkout.
        for own in wheels.glob("voicefleet-*.whl"):
            own.unlink()
        stamp.write_text(wanted)
    _link_tree(wheels, CONTEXT / "wheels")
    _link_tree(Settings().models_dir, CONTEXT / "models")
    _link_llama_server(CONTEXT / "llama-server")


@dataclass(frozen=True)
class Build:
    image: str
    seconds: float


def build_cpu_image() -> Build:
    """The Dockerfile's cpu target, offline: local base image, local wheels, local models."""
    ensure_dockerd()
    base = ensure_base_image()
    prepare_context(base)
    started = time.monotonic()
    run(
        "nice", "-n", "10", "docker", "build", "--network", "host",
        "-f", str(REPO / "deploy" / "Dockerfile"), "--target", "cpu",
        "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", "PIP_NO_INDEX=1",
        "-t", CPU_IMAGE, str(REPO),
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    return Build(CPU_IMAGE, time.monotonic() - started)


def remove_labelled(value: str) -> None:
    """Remove every container this test run labelled with `value`, running or not."""
    ids = run("docker", "ps", "-aq", "--filter", f"label={LABEL}={value}").stdout.split()
    if ids:
        run("docker", "rm", "-f", *ids)


def container_state(name: str) -> dict[str, object]:
    state = json.loads(run("docker", "inspect", "--format", "{{json .State}}", name).stdout)
    assert isinstance(state, dict)
    return state


def logs(name: str) -> str:
    result = run("docker", "logs", "--tail", "60", name, check=False)
    return result.stdout + result.stderr
