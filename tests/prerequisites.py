"""Suites that need more than Python: they run, or fail saying why, unless explicitly opted out.

A missing RabbitMQ server, ``ip`` or Chromium must never turn a red suite green by skipping it.
``scripts/bootstrap.sh --with-test-tools`` (run by ``scripts/test.sh``) installs all of them; a
machine that truly cannot run one (no root for network namespaces, say) names it in
``VF_TEST_OPT_OUT`` (comma-separated: ``chaos``, ``multihost``, ``browser``, ``tls`` (a private
RabbitMQ with TLS), ``vllm`` (vLLM's CPU build, 3.4 GB)), and only then are its tests skipped, with
the reason.
"""

from __future__ import annotations

import os

import pytest

OPT_OUT = "VF_TEST_OPT_OUT"
SUITES = ("chaos", "multihost", "browser", "tls", "vllm")


def opted_out(suite: str) -> bool:
    assert suite in SUITES, suite
    return suite in {s.strip() for s in os.environ.get(OPT_OUT, "").split(",")}


def require(suite: str, missing: str | None) -> None:
    """Fail the test with the reason when ``missing`` (a prerequisite of ``suite`` is absent),
    or skip it when the suite is opted out."""
    if missing is None:
        return
    if opted_out(suite):
        pytest.skip(f"{suite} tests opted out ({OPT_OUT}={os.environ[OPT_OUT]}): {missing}")
    pytest.fail(
        f"{suite} tests cannot run here: {missing}. Install it with"
        f" scripts/bootstrap.sh --with-test-tools, or opt out explicitly with {OPT_OUT}={suite}.",
        pytrace=False,
    )
