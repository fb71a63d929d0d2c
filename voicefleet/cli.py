"""The `voicefleet` command: one entry point per role, plus the local operator commands.

This package is the composition root: it may import every part; no part imports it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import cast

ROLE_ENTRYPOINTS = {
    "gateway": "gateway.app:run",
    "stt": "workers.stt.main:run",
    "llm": "workers.llm_bridge.main:run",
    "tts": "workers.tts.main:run",
}


def _load(target: str) -> Callable[..., object]:
    module_name, _, attribute = target.partition(":")
    return cast(Callable[..., object], getattr(importlib.import_module(module_name), attribute))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicefleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("gateway", help="run the WebSocket gateway (VF_GATEWAY_HOST/PORT)")

    worker = commands.add_parser("worker", help="run one worker process")
    worker.add_argument("kind", choices=["stt", "llm", "tts"])

    models = commands.add_parser("models", help="install and assemble the offline model files")
    models.add_argument("--check", action="store_true", help="only verify, install nothing")

    llm_server = commands.add_parser(
        "llm-server", help="serve the local chat model (llama.cpp, OpenAI-compatible)"
    )
    llm_server.add_argument("--port", type=int, default=8081)
    llm_server.add_argument(
        "--host", default="127.0.0.1", help="bind address (0.0.0.0 to serve other hosts)"
    )

    tts_provider = commands.add_parser(
        "tts-provider",
        help="serve a TTS model over HTTP for remote TTS workers (docs/tts-providers.md)",
    )
    tts_provider.add_argument("--provider", choices=["kokoro", "piper"], default="kokoro")
    tts_provider.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    tts_provider.add_argument("--port", type=int, default=8090)
    tts_provider.add_argument(
        "--host", default="127.0.0.1", help="bind address (0.0.0.0 to serve other hosts)"
    )

    commands.add_parser(
        "audit", help="audit the installed dependencies for known vulnerabilities (pip-audit)"
    )

    up = commands.add_parser("up", help="run the whole fleet locally until Ctrl-C")
    up.add_argument("--stt", type=int, default=1, help="STT worker replicas")
    up.add_argument("--llm", type=int, default=1, help="LLM bridge replicas")
    up.add_argument("--tts", type=int, default=1, help="TTS worker replicas")
    up.add_argument("--gateways", type=int, default=1, help="gateway processes")
    up.add_argument(
        "--tts-provider-server",
        nargs="?",
        type=int,
        const=8090,
        metavar="PORT",
        help="also run a TTS provider server (port 8090 unless given) that the TTS workers "
        "speak through, their own engine as the fallback (docs/tts-providers.md)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "gateway":
        _load(ROLE_ENTRYPOINTS["gateway"])()
    elif args.command == "worker":
        _load(ROLE_ENTRYPOINTS[args.kind])()
    elif args.command == "models":
        _load("voicefleet.models:main")(check_only=args.check)
    elif args.command == "llm-server":
        _load("voicefleet.llm_server:main")(port=args.port, host=args.host)
    elif args.command == "tts-provider":
        _load("workers.tts.provider_server:main")(
            provider=args.provider, device=args.device, host=args.host, port=args.port
        )
    elif args.command == "audit":
        _load("voicefleet.audit:main")()
    elif args.command == "up":
        _load("voicefleet.runner:main")(
            stt=args.stt,
            llm=args.llm,
            tts=args.tts,
            gateways=args.gateways,
            tts_provider_port=args.tts_provider_server,
        )


if __name__ == "__main__":
    main()
