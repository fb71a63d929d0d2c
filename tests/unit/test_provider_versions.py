"""The version range a TTS worker accepts of a provider server, and the VF_TTS_PROVIDERS list."""

from __future__ import annotations

import pytest

from fleet.settings import Settings
from workers.tts.providers import provider_list
from workers.tts.providers.versions import IncompatibleProvider, VersionRange, parse_version


def test_versions_order_numerically_not_as_text() -> None:
    assert parse_version("0.10.0") > parse_version("0.9.3")
    assert parse_version("v1.2.3-rc.1+build.5") == (1, 2, 3)


@pytest.mark.parametrize("version", ["0.1.0", "0.1.7", "0.99.0"])
def test_a_version_in_the_range_is_accepted(version: str) -> None:
    VersionRange("0.1.0", "1.0.0").check("p", version)


@pytest.mark.parametrize("version", ["0.0.9", "1.0.0", "2.3.4"])
def test_a_version_out_of_the_range_is_refused_saying_both(version: str) -> None:
    accepts = "this worker accepts >=0.1.0,<1.0.0"
    with pytest.raises(IncompatibleProvider, match=rf"reports version {version}; {accepts}"):
        VersionRange("0.1.0", "1.0.0").check("p", version)


def test_no_version_at_all_is_refused() -> None:
    with pytest.raises(IncompatibleProvider, match="'latest', not a semantic version"):
        VersionRange("0.1.0", "1.0.0").check("p", "latest")


def test_an_empty_range_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="empty provider version range"):
        VersionRange("2.0.0", "1.0.0")


def test_the_provider_list_is_in_order() -> None:
    assert provider_list(Settings()) == ["local"]
    assert provider_list(Settings(tts_providers="openai, remote,local")) == [
        "openai",
        "remote",
        "local",
    ]


@pytest.mark.parametrize("entries", ["", "local,nope", "local,local"])
def test_a_bad_provider_list_is_refused(entries: str) -> None:
    with pytest.raises(ValueError, match="VF_TTS_PROVIDERS"):
        provider_list(Settings(tts_providers=entries))
