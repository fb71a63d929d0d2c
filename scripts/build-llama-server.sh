#!/usr/bin/env bash
# Build llama.cpp's own OpenAI-compatible chat server, `llama-server`: the local chat server
# (`voicefleet llm-server`). It batches concurrent requests in parallel slots, so one user's first
# token does not wait for another user's whole reply (docs/benchmarks.md).
#
#   scripts/build-llama-server.sh OUT_DIR      writes OUT_DIR/llama-server
#
# The source is the llama.cpp that llama-cpp-python vendors in its source distribution: the package
# index is what every build place here can reach (this machine, an image build), and the digest
# below pins the exact source. The build is a portable CPU one (on x86-64: AVX2, FMA, F16C), not
# -march=native, which would also compile llama.cpp's AMX kernels that crash on some hosts; static
# libraries, so the one binary is all there is to install (it needs libgomp and libstdc++ at run
# time). Needs cmake and a C++ compiler. Callers cache the result keyed by this file's digest.
set -euo pipefail

source_package="llama-cpp-python==0.3.36"
source_sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=OFF
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
)

out="${1:?usage: $0 OUT_DIR}"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

printf '%s --hash=sha256:%s\n' "$source_package" "$source_sha256" >"$work/source.txt"
"$python" -m pip download --quiet --no-deps --no-binary llama-cpp-python --require-hashes \
  -r "$work/source.txt" -d "$work"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work" --wildcards '*/vendor/llama.cpp/*'
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"

cmake -S "$src" -B "$work/build" "${cmake_flags[@]}" >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server --parallel "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -n 80 "$work/build.log" >&2; exit 1; }

mkdir -p "$out"
install -m 0755 "$work/build/bin/llama-server" "$out/llama-server.partial"
mv "$out/llama-server.partial" "$out/llama-server"
