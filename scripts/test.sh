#!/usr/bin/env bash
# Set up what is missing (test tools included), run the quality gates (ruff, ruff format, mypy
# strict over the product, tests and benchmarks), make sure RabbitMQ and Redis run, then pytest.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh --with-test-tools
echo "test: ruff check, ruff format --check, mypy" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m voicefleet.services
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
