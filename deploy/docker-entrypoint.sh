#!/bin/sh
# Container entry point: verify the model files a role needs, then become that role.
#   gateway | worker stt|llm|tts | llm-server [--port N] | models [--check] | any other command
# VF_MODELS_ON_START: check (default: verify the digests of the files in VF_MODELS_DIR and stop
# with a clear message if one is missing or corrupt) or skip.
set -eu

[ "$#" -gt 0 ] || set -- gateway

needs_models=0
case "$1" in
  gateway|models|up) ;;
  worker)
    case "${2:-}" in stt|tts) needs_models=1 ;; esac ;;
  llm-server) needs_models=1 ;;
  *) exec "$@" ;;
esac

if [ "$needs_models" -eq 1 ] && [ "${VF_MODELS_ON_START:-check}" = "check" ]; then
  if ! voicefleet models --check; then
    echo "voicefleet-entrypoint: the model files in ${VF_MODELS_DIR} are missing or corrupt;" \
      "fill that directory with \`voicefleet models\` (see docs/deploy.md)" >&2
    exit 1
  fi
fi

exec voicefleet "$@"
