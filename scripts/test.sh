#!/usr/bin/env bash
# Set up what is missing (test tools included), make sure RabbitMQ and Redis run, then pytest.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh --with-test-tools
.venv/bin/python -m voicefleet.services
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
