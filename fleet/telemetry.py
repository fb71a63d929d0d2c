"""Logs and metrics, the same in every process.

Logs are structlog JSON lines; session work binds ``session_id``, ``turn`` and ``worker_id``
through contextvars so every line of it carries them. Metrics are defined here, once, so that
dashboards can rely on their names.
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from fleet.settings import Settings

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def configure_logging(settings: Settings, role: str) -> str:
    """Set up structured logging; returns the worker id bound to every line."""
    worker_id = settings.resolved_worker_id(role)
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Libraries (uvicorn, aio-pika) log through the standard library: render their lines the
    # same way, so that one process writes one format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.basicConfig(handlers=[handler], level=level, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(role=role, worker_id=worker_id)
    return worker_id


def serve_metrics(settings: Settings) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")


# --- per-stage latency -------------------------------------------------------------------------
STT_FINAL_LATENCY = Histogram(
    "vf_stt_final_latency_seconds",
    "End of the user's speech (last voiced audio) to the final transcript, audio time plus decode.",
    buckets=_LATENCY_BUCKETS,
)
STT_DECODE_SECONDS = Histogram(
    "vf_stt_decode_seconds", "One Whisper decode.", ["purpose"], buckets=_LATENCY_BUCKETS
)
LLM_FIRST_TOKEN = Histogram(
    "vf_llm_first_token_seconds", "Turn request to the first token.", buckets=_LATENCY_BUCKETS
)
LLM_FIRST_SENTENCE = Histogram(
    "vf_llm_first_sentence_seconds",
    "Turn request to the first piece sent to TTS.",
    buckets=_LATENCY_BUCKETS,
)
TTS_FIRST_BYTE = Histogram(
    "vf_tts_first_byte_seconds", "TTS job start to its first audio chunk.", buckets=_LATENCY_BUCKETS
)
GATEWAY_TTFA = Histogram(
    "vf_gateway_time_to_first_audio_seconds",
    "Final transcript to the first reply audio sent to the client.",
    buckets=_LATENCY_BUCKETS,
)

# --- load ---------------------------------------------------------------------------------------
SESSIONS = Gauge("vf_sessions", "Sessions held by this process.")
JOBS_IN_FLIGHT = Gauge("vf_jobs_in_flight", "Jobs being worked on by this process.")

# --- outcomes -------------------------------------------------------------------------------------
STALE_SKIPPED = Counter(
    "vf_stale_work_skipped_total", "Work dropped because its turn was superseded.", ["stage"]
)
DEAD_LETTERED = Counter(
    "vf_dead_lettered_total", "Messages sent to the dead-letter queue.", ["queue", "reason"]
)
ERRORS = Counter("vf_errors_total", "Errors by stage and code.", ["stage", "code"])
CLIENT_ERRORS = Counter("vf_client_errors_total", "Error events sent to clients.", ["code"])
SPECULATIONS = Counter(
    "vf_speculations_total",
    "Replies started at a pause before the end of the turn: used (the turn ended with the same "
    "words) or wasted (the user went on; cancelled unheard).",
    ["outcome"],
)
