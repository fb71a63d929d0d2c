"""`voicefleet tts-provider` reporting another version than its package's, as a provider server
of another release would: ``python -m tests.versioned_provider_server VERSION tts-provider ...``.

The version is the one thing that differs between releases that a worker checks (GET /tts/health
and each stream's X-Provider-Version); everything else is the server as shipped.
"""

from __future__ import annotations

import sys

import workers.tts.provider_server as provider_server
from voicefleet.cli import main

if __name__ == "__main__":
    provider_server.PROVIDER_VERSION = sys.argv.pop(1)
    main()
