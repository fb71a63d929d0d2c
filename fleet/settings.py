"""Every setting of every process, read from the environment with the prefix ``VF_``.

One flat class keeps the README table and the code in step: a field here is a row there.
Defaults are safe for a single laptop; production overrides them per Deployment.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_PROCESS_TOKEN = secrets.token_hex(2)


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "voicefleet" / "models"


# Backchannels (VF_BARGE_IN_ACKNOWLEDGEMENTS): short, and never a request of their own.
DEFAULT_ACKNOWLEDGEMENTS = {
    "en": "uh-huh, yeah, right, okay, mm-hmm, uh huh, mhm, mm, hmm, hm, yes, yep, yup, ok, "
    "alright, all right, i see, sure, got it, oh, ah, aha, cool, great, nice, wow, true, "
    "exactly, indeed, of course, fine, good, go on",
    "de": "mhm, ja, genau, okay, ok, aha, hm, stimmt, richtig, klar, ach so, gut, super",
    "fr": "mhm, oui, ouais, d'accord, ok, okay, ah bon, je vois, hm, voilà, bien, exactement",
    "es": "ajá, sí, vale, claro, ya, ok, okay, bueno, ya veo, mhm, exacto, bien",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VF_", extra="ignore")

    # --- services -------------------------------------------------------------------------
    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL, or the comma-separated URLs of a cluster's nodes: a process "
        "connects to the first that answers and, when it loses that node, to the next one.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")
    amqp_heartbeat_s: int = Field(
        10,
        description="AMQP heartbeat (s) unless the URL sets one: how soon the broker notices a "
        "process cut off by the network and hands its sessions and jobs to others (~2x this).",
    )
    namespace: str = Field(
        "",
        description="Prefix for every queue, exchange and Redis key; lets fleets (and tests) "
        "share one broker and one Redis without seeing each other.",
    )

    # --- process identity, logs, metrics ---------------------------------------------------
    worker_id: str = Field("", description="Name of this process in logs; default host-pid.")
    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console).")
    metrics_port: int = Field(
        0,
        description="Port of a process's Prometheus /metrics endpoint; 0 disables it (the gateway "
        "then serves /metrics on its HTTP port, for local runs). The manifests and compose set "
        "9100, which only the monitoring namespace reaches. `voicefleet up` numbers its "
        "workers' ports from here (default 9101).",
    )
    health_port: int = Field(
        0,
        description="Port of a worker's /livez and /readyz (fleet/health.py); 0 disables them. "
        "The manifests and compose set 8080.",
    )

    # --- gateway ---------------------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Gateway bind address.")
    gateway_port: int = Field(8000, description="Gateway HTTP/WebSocket port.")
    max_frame_bytes: int = Field(
        16000,
        description="Largest binary audio frame accepted (bytes); 16000 = 0.5 s of 16 kHz PCM16.",
    )
    max_text_bytes: int = Field(4096, description="Largest text (JSON) message accepted (bytes).")
    max_session_s: int = Field(
        3600,
        description="Longest allowed session (s); must stay below the session lease queue's "
        "consumer-timeout (docs/deploy.md).",
    )
    assign_timeout_s: float = Field(
        10.0,
        description="How long a new session waits for an STT worker before the client gets `busy`.",
    )
    gateway_docs: bool = Field(
        False,
        description="Serve the gateway's OpenAPI pages (/docs, /redoc, /openapi.json); off by "
        "default, since they describe the service to anyone who can reach it.",
    )

    # --- gateway: auth (docs/security.md) ---------------------------------------------------
    auth_token: SecretStr = Field(
        SecretStr(""),
        description="A static shared token: if set, clients may send it as `token` in `start` "
        "(compared in constant time). Prefer signed tokens (VF_AUTH_JWT_SECRET).",
    )
    auth_jwt_algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        "HS256",
        description="Algorithm of the signed client tokens (JWT): HS256 with "
        "VF_AUTH_JWT_SECRET, or RS256 / ES256 with VF_AUTH_JWT_PUBLIC_KEY. Tokens signed with "
        "any other algorithm are refused.",
    )
    auth_jwt_secret: SecretStr = Field(
        SecretStr(""),
        description="HS256 key (at least 32 bytes) that signs and verifies client tokens; if "
        "set, clients must send a valid token in `start`.",
    )
    auth_jwt_public_key: SecretStr = Field(
        SecretStr(""),
        description="RS256 / ES256 public key (PEM text, or the path of a PEM file) that "
        "verifies client tokens; if set, clients must send a valid token in `start`.",
    )
    auth_jwt_private_key: SecretStr = Field(
        SecretStr(""),
        description="RS256 / ES256 private key (PEM text or path) with which `POST /v1/tokens` "
        "signs; empty: with RS256 / ES256 tokens come from your own issuer.",
    )
    auth_jwt_issuer: str = Field(
        "voicefleet", description="`iss` a client token must carry (and issued tokens get)."
    )
    auth_jwt_audience: str = Field(
        "voicefleet-gateway",
        description="`aud` a client token must carry (and issued tokens get).",
    )
    auth_token_ttl_s: int = Field(
        900,
        gt=0,
        description="Lifetime of a token from `POST /v1/tokens` (s); a request may ask for less.",
    )
    auth_api_key: SecretStr = Field(
        SecretStr(""),
        description="API key (at least 16 characters) of the app server that calls `POST "
        "/v1/tokens` (`Authorization: Bearer <key>`); empty: the endpoint is off (404).",
    )
    allow_anonymous: bool = Field(
        False,
        description="Let the gateway listen on a non-loopback address with no client auth "
        "configured (anyone may connect); without it such a gateway refuses to start.",
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated browser origins (`https://app.example.com`) allowed to "
        "open /ws/audio besides the gateway's own; `*` allows any. Others get HTTP 403.",
    )

    # --- gateway: limits (docs/security.md, "Limits") ----------------------------------------
    start_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a valid `start` within this time is closed "
        "(`start_timeout`, 1008).",
    )
    max_connections_per_ip: int = Field(
        16,
        gt=0,
        description="Open connections one client address may hold on one gateway; more get "
        "`too_many_connections` (1008). Behind a proxy, see VF_TRUSTED_PROXIES.",
    )
    trusted_proxies: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses (or `*`) of proxies whose X-Forwarded-For names "
        "the client address used by VF_MAX_CONNECTIONS_PER_IP.",
    )
    error_budget: int = Field(
        10,
        gt=0,
        description="Recoverable errors (`bad_message`, `bad_frame`, ...) one connection may "
        "cause; the next one closes it (`too_many_errors`, 1008).",
    )
    audio_rate: float = Field(
        1.5,
        gt=0,
        description="Audio a client may send, sustained, in seconds of audio per second "
        "(a frame counts at least 10 ms); faster ends the connection (`audio_too_fast`, 1008).",
    )
    audio_burst_s: float = Field(
        10.0,
        gt=0,
        description="Seconds of audio a client may send at once above VF_AUDIO_RATE (a token "
        "bucket's size; covers audio queued while the session is being assigned).",
    )
    replay_max_bytes: int = Field(
        1_920_000,
        gt=0,
        description="Memory for the utterance in progress kept per connection for replay to a "
        "new STT worker (bytes, 320 per frame counted besides its audio; 1920000 = 60 s); "
        "older audio is dropped.",
    )
    send_queue_max_bytes: int = Field(
        4_000_000,
        gt=0,
        description="Bytes of events and reply audio waiting for one client; a client that "
        "falls further behind is closed (`slow_client`, 1013).",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a send to one client may block; a client that stops reading is "
        "closed (`slow_client`, 1013) and its session's work freed.",
    )
    send_buffer_bytes: int = Field(
        0,
        ge=0,
        description="Kernel send buffer of each client socket (SO_SNDBUF); 0 = the kernel's "
        "auto-tuning. What a client that stops reading holds in the kernel.",
    )
    ws_ping_interval_s: float = Field(
        20.0,
        gt=0,
        description="How often the gateway pings each client; one that does not answer within "
        "as long again is closed (1011, `keepalive ping timeout`): a half-open connection ends.",
    )
    stt_languages: str = Field(
        "",
        description="Comma-separated languages a client may ask for in `start`; empty = the "
        "99 of Whisper's multilingual models (fleet/engines.py). Others get "
        "`unsupported_language` (1003).",
    )
    tts_voice_names: str = Field(
        "",
        description="Comma-separated voices a client may ask for in `start`; empty = the "
        "provider's: Kokoro v1.0's 54 voices (fleet/engines.py), any name for Piper. Others "
        "get `unknown_voice` (1003).",
    )

    # --- sessions, turns, history -----------------------------------------------------------
    history_turns: int = Field(10, description="Turns of conversation history kept per session.")
    session_ttl_s: int = Field(
        3600, description="How long an idle session's state (turn, history) lives in Redis (s)."
    )
    transcripts_max_age: str = Field(
        "7D", description="Retention of the `vf.transcripts` stream (RabbitMQ x-max-age)."
    )

    barge_in_decision_s: float = Field(
        0.45,
        gt=0,
        description="When the user speaks over a reply, playback pauses at once (`audio_pause`); "
        "this long after the speech began (as the voice detector places it, some 0.1 s before it "
        "is sure of it), words that are all acknowledgements, or may still become one "
        '("yeah, but"), or none resume it (`audio_resume`) without waiting for the end of the '
        "user's turn (s). Words that are not an acknowledgement cancel the reply whenever they "
        "come, after a resume too.",
    )
    barge_in_least_logprob: float = Field(
        -0.5,
        description="When the user speaks over a reply, a transcript of up to three words whose "
        "mean token log-probability (the recognizer's confidence) is below this counts as no "
        "words: it resumes the reply instead of cancelling it. Whisper hears words in coughs "
        "and other wordless sounds, and mishears short acknowledgements, mostly unsurely "
        "(docs/benchmarks.md). -inf trusts every transcript.",
    )
    barge_in_acknowledgements: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ACKNOWLEDGEMENTS),
        description="Per language (JSON object of Whisper language code to comma-separated "
        "phrases): what a listener says over a reply to show they follow, which resumes it "
        "instead of cancelling it. A language not listed has none. The first four also prime "
        "the speech recognizer for short utterances (up to 1.5 s), which it otherwise often "
        "mishears as other words.",
    )

    # --- models ------------------------------------------------------------------------------
    models_dir: Path = Field(
        default_factory=_default_models_dir,
        description="Where `voicefleet models` assembles the offline model files.",
    )

    # --- STT worker ----------------------------------------------------------------------------
    stt_model: str = Field(
        "",
        description="faster-whisper model: a local directory or a hub id; "
        "empty = the assembled Whisper base in models_dir.",
    )
    stt_device: str = Field("cpu", description="STT device: cpu or cuda.")
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16).")
    stt_cpu_threads: int = Field(2, description="CPU threads for Whisper.")
    stt_language: str = Field("en", description="Default transcription language.")
    stt_max_sessions: int = Field(
        8, description="Sessions one STT worker holds at once (its lease prefetch)."
    )
    stt_first_partial_s: float = Field(
        0.3,
        gt=0,
        description="Speech after its start (as the voice detector saw it) before the first "
        "partial transcript of an utterance is decoded (s): the first words decide whether "
        "speech over a playing reply interrupts it.",
    )
    stt_partial_interval_s: float = Field(
        0.6, description="Minimum time between partial transcripts of one session (s)."
    )
    stt_window_s: float = Field(
        6.0,
        description="Longest stretch of not-yet-committed audio decoded for a partial (s); "
        "older speech is committed at pauses or when the window fills.",
    )
    stt_end_silence_s: float = Field(
        0.25, description="Silence after speech before Smart Turn is asked if the turn ended (s)."
    )
    stt_silence_timeout_s: float = Field(
        1.2, description="Silence after which the turn ends even if Smart Turn disagrees (s)."
    )
    stt_turn_threshold: float = Field(
        0.5, description="Smart Turn probability above which the user is done speaking."
    )
    stt_vad_threshold: float = Field(0.5, description="Silero VAD speech probability threshold.")
    speculate_turns: bool = Field(
        True,
        description="When the user pauses and Smart Turn expects more, start the reply to what "
        "was said so far, held back: if the silence timeout then ends the turn with the same "
        "words, its reply is already on the way; if the user goes on, it is cancelled unheard "
        "and unrecorded. Read by the STT workers (which announce the pause) and the gateways.",
    )
    stt_idle_timeout_s: float = Field(
        120.0,
        description="An STT worker releases a held session after this long without audio (s).",
    )

    # --- LLM bridge ----------------------------------------------------------------------------
    llm_url: str = Field(
        "http://127.0.0.1:8081/v1",
        description="OpenAI-compatible base URL (vLLM, llama.cpp server, a hosted API).",
    )
    llm_model: str = Field("smollm2", description="Model name sent to the chat endpoint.")
    llm_api_key: str = Field("none", description="API key for the chat endpoint.")
    llm_system_prompt: str = Field(
        "You are a friendly voice assistant. Answer in one to three short spoken sentences. "
        "Do not use lists, markdown or emoji.",
        description="System prompt of every conversation.",
    )
    llm_max_tokens: int = Field(160, description="Longest reply (tokens).")
    llm_temperature: float = Field(0.3, description="Sampling temperature.")
    llm_concurrency: int = Field(8, description="Turns one LLM bridge streams at once.")
    llm_first_clause_chars: int = Field(
        24,
        description="The first piece of a reply goes to TTS at a clause boundary once it has "
        "this many characters, instead of waiting for the end of the sentence.",
    )
    llm_first_piece_words: int = Field(
        5,
        ge=0,
        description="With no clause or sentence end by then, the first piece of a reply goes to "
        "TTS at the first word boundary from this many words on (not after a word such as "
        "'the' or 'and' that leans on the next); 0 waits for a clause or sentence end.",
    )
    llm_timeout_s: float = Field(60.0, description="Timeout of one chat request (s).")

    # --- local chat server (`voicefleet llm-server`) ----------------------------------------------
    llm_server_slots: int = Field(
        4,
        ge=1,
        description="Replies the local chat server (llama-server) generates at once, batched; "
        "more requests wait for a free slot. Each slot holds 2048 tokens of context.",
    )
    llm_server_threads: int = Field(2, ge=1, description="CPU threads of the local chat server.")

    # --- TTS worker ----------------------------------------------------------------------------
    tts_provider: Literal["kokoro", "piper"] = Field(
        "kokoro",
        description="TTS provider: kokoro, or piper (one 22.05 kHz voice, any voice name).",
    )
    tts_voice: str = Field("af_heart", description="Default voice.")
    tts_lang: str = Field("en-us", description="Language code for phonemization.")
    tts_speed: float = Field(1.0, description="Speech rate.")
    tts_concurrency: int = Field(
        2,
        description="Sentences one TTS worker synthesizes at once. Above 1, one slot is kept "
        "for first pieces: a first piece that comes during a later piece's synthesis starts at "
        "once beside it, and later pieces never start beside a first piece (docs/benchmarks.md, "
        '"One synthesis at a time or two").',
    )
    tts_prefetch: int = Field(
        4,
        ge=1,
        description="Sentences one TTS worker holds from `tts.jobs` at once (at least "
        "`VF_TTS_CONCURRENCY`); it synthesizes the held ones first pieces first, then earliest "
        'deadline first (docs/architecture.md, "Deadlines").',
    )
    tts_chunk_ms: int = Field(200, description="Size of one streamed audio chunk (ms).")
    tts_model: str = Field(
        "", description="Kokoro ONNX file; empty = the assembled one in models_dir."
    )
    tts_voices: str = Field(
        "", description="Kokoro voices .npz; empty = the assembled one in models_dir."
    )
    tts_execution_provider: str = Field(
        "CPUExecutionProvider",
        description="onnxruntime execution provider for Kokoro (CUDAExecutionProvider on GPU).",
    )
    tts_gpu_mem_limit_mb: int = Field(
        0,
        description="Cap of the GPU memory arena of Kokoro's CUDA provider (MiB), so that it "
        "shares a GPU with vLLM and STT; 0 = no cap.",
    )
    tts_providers: str = Field(
        "local",
        description="Comma-separated providers a TTS worker speaks through, in order of "
        "preference (docs/tts-providers.md): `local` (VF_TTS_PROVIDER in this process), "
        "`remote` (a provider server at VF_TTS_PROVIDER_URL), `openai` (VF_TTS_OPENAI_URL), "
        "`wyoming` (VF_TTS_WYOMING_URL), `elevenlabs`, `auto` (a local GPU if CUDA is present, "
        "else a configured remote one while healthy, then local). A sentence a provider fails "
        "is spoken again, whole, by the next.",
    )
    tts_provider_url: str = Field(
        "",
        description="Base URL of the provider server (`voicefleet tts-provider`) the `remote` "
        "provider uses, e.g. http://tts-provider:8090.",
    )
    tts_provider_version_min: str = Field(
        "0.1.0",
        description="Lowest provider server version a TTS worker accepts (semver, inclusive).",
    )
    tts_provider_version_max: str = Field(
        "1.0.0",
        description="Provider server versions from this one on are refused (semver, exclusive).",
    )
    tts_provider_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a remote provider's next piece of audio (s); a provider "
        "slower than that has failed the sentence.",
    )
    tts_breaker_cooldown_s: float = Field(
        10.0,
        gt=0,
        description="A provider that failed is skipped for this long (s), then used again once "
        "its health (and version) check passes.",
    )
    tts_openai_url: str = Field(
        "",
        description="Base URL of the OpenAI-compatible speech endpoint of the `openai` provider "
        "(its /audio/speech), e.g. http://tts-provider:8090/v1.",
    )
    tts_openai_model: str = Field("tts-1", description="Model name sent to the `openai` provider.")
    tts_openai_api_key: SecretStr = Field(
        SecretStr("none"), description="API key of the `openai` provider."
    )
    tts_wyoming_url: str = Field(
        "",
        description="Address of the Wyoming TTS server (wyoming-piper, ...) of the `wyoming` "
        "provider: tcp://host:port.",
    )
    tts_elevenlabs_url: str = Field(
        "https://api.elevenlabs.io",
        description="Base URL of the ElevenLabs API of the `elevenlabs` provider.",
    )
    tts_elevenlabs_api_key: SecretStr = Field(
        SecretStr(""), description="ElevenLabs API key (`xi-api-key`) of the `elevenlabs` provider."
    )
    tts_elevenlabs_model: str = Field(
        "eleven_flash_v2_5", description="ElevenLabs model (`model_id`)."
    )
    tts_elevenlabs_voice_id: str = Field(
        "21m00Tcm4TlvDq8ikWAM",
        description="ElevenLabs voice id spoken with, unless a request names a voice id itself.",
    )

    # --- delivery ------------------------------------------------------------------------------
    max_deliveries: int = Field(
        3, description="Attempts at one job before it is dead-lettered as poison."
    )
    drain_timeout_s: float = Field(
        20.0,
        description="On SIGTERM, how long a process may finish or hand back its work.",
    )
    # Work queue bounds: part of each queue's declaration (changing them: docs/deploy.md).
    work_ttl_s: int = Field(
        60,
        gt=0,
        description="Turns and sentences waiting longer than this in `llm.turns` / `tts.jobs` "
        "are dead-lettered unanswered (nobody waits that long). Part of the queues' "
        'declaration: docs/deploy.md, "Changing the work queues\' bounds".',
    )
    work_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="Type of the queues whose loss would lose work (`stt.sessions`, "
        "`llm.turns`, `tts.jobs`, the dead letters): `quorum` on a cluster of three or more "
        "nodes (replicated: they survive a node), `classic` on one node (faster hops). Part of "
        "the queues' declaration: docs/deploy.md, \"Changing the work queues' bounds\".",
    )
    work_max_length: int = Field(
        10_000,
        gt=0,
        description="Messages a work queue holds waiting; beyond it the oldest are "
        "dead-lettered. Part of the queues' declaration (docs/deploy.md).",
    )

    def resolved_worker_id(self, role: str) -> str:
        if self.worker_id:
            return self.worker_id
        # A restarted container often gets the same hostname and pid; the random part keeps it
        # from colliding with its predecessor's exclusive queues before the broker drops those.
        return f"{role}-{socket.gethostname()}-{os.getpid()}-{_PROCESS_TOKEN}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
