"""Pytest fixtures for a real single-node Kafka broker (see services/stack/kafka_broker.py).

One broker per test session, in a temp data dir, stopped and removed at the end even when
tests fail. With ``$KAFKA_BOOTSTRAP_SERVERS`` set, that cluster is used instead and nothing is
started (tests that need to bounce the broker should skip when ``not kafka_broker.can_restart``).

Wire it in once, in tests/conftest.py::

    pytest_plugins = ["tests.integration.kafka_fixtures"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.stack.kafka_broker import BrokerHandle, managed_broker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[BrokerHandle]:
    """The session's broker: ``.bootstrap_servers``, ``.stop()``, ``.start()``, ``.can_restart``."""
    with managed_broker() as broker:
        yield broker


@pytest.fixture
def kafka_bootstrap_servers(kafka_broker: BrokerHandle) -> str:
    """Bootstrap servers of a broker that is up for this test.

    start() is a no-op on a running broker; it matters when an earlier outage test stopped
    the broker and failed before bringing it back.
    """
    return kafka_broker.start()
