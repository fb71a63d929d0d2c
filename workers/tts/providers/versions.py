"""Which provider server versions a TTS worker speaks with: a semver range, min inclusive, max
exclusive (``VF_TTS_PROVIDER_VERSION_MIN`` / ``_MAX``).

A provider server reports its version on ``GET /tts/health`` (docs/tts-providers.md). The major
version changes when the API does in a way an older worker cannot follow, so the default range
is one major version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class IncompatibleProvider(Exception):
    """The provider's version is outside the accepted range (or is no version at all)."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``major.minor.patch`` of a semver string; pre-release and build parts do not order it
    here (a provider is either in the range or not). Raises ValueError for anything else."""
    match = _SEMVER.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a semantic version (major.minor.patch)")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class VersionRange:
    minimum: str
    maximum: str

    def __post_init__(self) -> None:
        if parse_version(self.minimum) >= parse_version(self.maximum):
            raise ValueError(
                f"empty provider version range: {self.minimum} (inclusive) to "
                f"{self.maximum} (exclusive)"
            )

    def check(self, provider: str, version: str) -> None:
        """Raise IncompatibleProvider, saying what was found and what is accepted, unless
        ``version`` is in the range."""
        accepted = f"this worker accepts >={self.minimum},<{self.maximum}"
        try:
            found = parse_version(version)
        except ValueError:
            raise IncompatibleProvider(
                f"provider {provider} reports version {version!r}, not a semantic version; "
                f"{accepted} (VF_TTS_PROVIDER_VERSION_MIN/_MAX)"
            ) from None
        if not parse_version(self.minimum) <= found < parse_version(self.maximum):
            raise IncompatibleProvider(
                f"provider {provider} reports version {version}; {accepted} "
                "(VF_TTS_PROVIDER_VERSION_MIN/_MAX): upgrade the one that is behind"
            )
