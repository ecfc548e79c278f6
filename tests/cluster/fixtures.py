"""Pytest fixtures for a real single-node Kubernetes cluster (services/stack/cluster).

One cluster per test session, in a temp run dir, brought up on first use and always torn down:
by the last test (`test_teardown_restores_host`, moved to the end of the session, which checks
that the host is back to its baseline) or by the session finalizer, pass, fail or Ctrl-C. When a
cluster test fails, each pod's events and its containers' last log lines (and the daemons' log
tails) are taken at once, before the test's own fixtures clean up, and shown in that test's
failure report (section "cluster diagnostics"), so a CI failure can be read without rerunning.

The binaries must have been built (`make cluster-build`; `make test` does it first): without
them the fixture fails with that message, it never skips.

tests/cluster/conftest.py imports this module; a suite elsewhere can use `k8s_cluster` too once
this module is listed in the root conftest's `pytest_plugins` (then drop the import there).
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.stack.cluster import Cluster, PreflightError, build, host, images

TEARDOWN_TEST = "test_teardown_restores_host"


@dataclass
class ClusterSession:
    """The session's cluster and the host as it was before it started."""

    cluster: Cluster
    baseline: dict
    config: pytest.Config
    failures: list[str] = field(default_factory=list)
    stopped: bool = False
    problems: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)  # failures whose report carries the diagnostics

    def diagnostics_text(self) -> str:
        """What `dump_diagnostics` prints: every pod's phase and events, its containers' log tails, the daemons'."""
        out = io.StringIO()
        try:
            self.cluster.dump_diagnostics(out=out)
        except Exception as e:  # noqa: BLE001 - never hide the test's own failure behind this one
            out.write(f"(diagnostics failed: {e})\n")
        return out.getvalue()

    def diagnostics(self) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            with capman.global_and_fixture_disabled():
                self.cluster.dump_diagnostics()
        else:
            self.cluster.dump_diagnostics()

    def stop(self) -> list[str]:
        """Tear down once (diagnostics first when a cluster test failed); returns the problems."""
        if not self.stopped:
            self.stopped = True
            try:
                if set(self.failures) - set(self.reported):
                    self.diagnostics()
            finally:
                self.problems = self.cluster.down()
        return self.problems


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _log(msg: str) -> None:
    print(msg, flush=True)


@pytest.fixture(scope="session")
def k8s_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSession]:
    missing = build.missing_binaries()
    if missing:
        pytest.fail(f"the cluster's binaries are not built ({', '.join(missing)}): run `make cluster-build` "
                    "(`make test` runs it first)", pytrace=False)
    if not images.BASE_ARCHIVE.is_file():
        pytest.fail(f"the base image {images.BASE_ARCHIVE} is not built: run `make cluster-build`", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the cluster tests need root (bridges, containerd, kubelet)", pytrace=False)
    # SIGTERM (a CI runner stopping the job) tears down like Ctrl-C instead of leaving the cluster behind.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))
    run_dir = Path(tmp_path_factory.mktemp("cluster"))
    session = ClusterSession(Cluster(run_dir, log=_log), host.snapshot(), request.config)
    request.config._k8s_session = session  # for the failure hook below
    try:
        session.cluster.up()
    except PreflightError as e:  # refused before touching the host (e.g. `make cluster-up` is running)
        session.stopped = True
        pytest.fail(f"the cluster cannot start: {e}", pytrace=False)
    except BaseException as e:  # Ctrl-C included: never leave a half-started cluster behind
        try:
            if isinstance(e, Exception) and session.cluster.kubeconfig.exists():
                session.diagnostics()
        finally:
            session.stop()
        if isinstance(e, Exception):
            pytest.fail(f"the cluster did not come up: {e}", pytrace=False)
        raise
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def k8s_cluster(k8s_session: ClusterSession) -> Cluster:
    if k8s_session.stopped:
        pytest.fail("the session's cluster was already torn down (the teardown test must run last)", pytrace=False)
    return k8s_session.cluster


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The teardown check runs last in the whole session, after every test that uses the cluster."""
    last = [i for i in items if i.name == TEARDOWN_TEST]
    if last:
        items[:] = [i for i in items if i.name != TEARDOWN_TEST] + last


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A failed test that used the cluster: its report gets the cluster's diagnostics, taken now."""
    report = yield
    if report.failed and "k8s_session" in getattr(item, "fixturenames", ()):
        session = getattr(item.config, "_k8s_session", None)
        if session is not None:
            session.failures.append(item.nodeid)
            if not session.stopped and item.nodeid not in session.reported:
                report.sections.append(("cluster diagnostics (pods, events, container log tails)",
                                        session.diagnostics_text()))
                session.reported.append(item.nodeid)
    return report
