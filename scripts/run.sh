#!/usr/bin/env bash
# Set up what is missing, then run the whole fleet locally until Ctrl-C.
# Arguments go to `voicefleet up` (e.g. --stt 2 --tts 2; --tts-provider-server: TTS workers speak
# through a TTS provider server process, their own engine as the fallback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/voicefleet up "$@"
