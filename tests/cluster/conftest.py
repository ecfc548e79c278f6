"""The cluster fixtures (see fixtures.py)."""

from tests.cluster.fixtures import (  # noqa: F401 - fixtures and hooks pytest finds by name
    k8s_cluster,
    k8s_session,
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
)
