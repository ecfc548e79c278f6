"""Offline chart tests: helm 3 and helm 4 render helm/serving-patterns; nothing talks to a cluster.

The helm binaries come from `python -m services.stack.helm fetch` (`make test` runs it through
`make helm-fetch`); without them every test here fails and says so (never a skip).
"""

from __future__ import annotations

import pytest

from services.stack import helm as helm_tool
from tests.chart.helpers import HELMS, helm_binary


@pytest.fixture(scope="session", autouse=True)
def helm_versions() -> dict[int, str]:
    """Both binaries present and reporting the pinned versions."""
    versions = {}
    for major in HELMS:
        got = helm_tool.reported_version(helm_binary(major))
        assert got == helm_tool.RELEASES[major].version, f"helm {major} reports {got}"
        versions[major] = got
    return versions
