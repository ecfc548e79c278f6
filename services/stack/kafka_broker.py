"""A real, single-node Apache Kafka broker (KRaft) for the local stack and the tests.

Design
------
* **Where the broker comes from.** Only package registries are reachable, so the broker is
  not a release tarball: ``fetch`` writes a throwaway ``pom.xml`` that depends on
  ``org.apache.kafka:kafka_2.13`` (which pulls kafka-server, kafka-storage, kafka-raft, ...)
  plus a log4j2 binding for slf4j, and lets ``mvn dependency:copy-dependencies`` copy the
  runtime jars into ``<cache>/<version>/lib``. A ``.complete`` marker is written last, so a
  fetch that died half-way is simply redone. ``<cache>`` is ``$KAFKA_CACHE_DIR`` or
  ``$SERVING_PATTERNS_CACHE/kafka`` (outside the repository, so a fresh clone reuses it;
  see ``services/stack/paths.py``).
* **One data dir = one broker.** Everything a broker owns lives in its data dir:
  ``cluster.json`` (cluster id and ports, fixed at first start so a restarted broker comes
  back at the *same* address with the *same* data), the generated ``server.properties`` and
  ``log4j2.properties``, the Kafka log dirs, ``broker.log`` (the JVM's stdout/stderr) and,
  while it runs, ``state.json`` (pid, bootstrap servers). Because the state is on disk, the
  CLI's ``stop``/``status`` work from another process than the one that ran ``start``.
* **Start** formats the storage once (``kafka.tools.StorageTool format`` with a static
  single-voter quorum), launches ``java -cp lib/* kafka.Kafka`` in its own session (so a
  Ctrl-C in a terminal does not reach it and ``stop`` can signal the whole group), and only
  returns once a kafka-python admin client sees the broker in the cluster metadata. Any
  failure raises :class:`BrokerError` carrying the tail of ``broker.log``.
* **Stop** sends SIGTERM (Kafka's shutdown hook flushes and closes the logs cleanly), waits,
  then SIGKILLs; it is idempotent.
* **An existing cluster wins.** If ``$KAFKA_BOOTSTRAP_SERVERS`` is set, :func:`ensure_broker`
  and :func:`managed_broker` use it and start nothing.

CLI: ``python -m services.stack.kafka_broker {fetch,start,stop,status}`` (``--help`` for options).
``start`` prints only the bootstrap servers on stdout (progress goes to stderr), so
``BOOTSTRAP=$(python -m services.stack.kafka_broker start)`` works.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TextIO

from services.kafka.topics import MAX_MESSAGE_BYTES
from services.stack.paths import CACHE_DIR, ENV_BOOTSTRAP, RUN_DIR

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# The log4j2 line Kafka 4.1.1 itself ships with; the slf4j 1.7 binding makes the broker log.
LOG4J_VERSION = "2.24.3"
# Pinned because Maven 3.8 would otherwise pick the 2.8 plugin from its built-in defaults.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

NODE_ID = 1
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""


def _say(message: str) -> None:
    # Progress goes to stderr so stdout carries only results (the bootstrap string).
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fetch


def cache_root() -> Path:
    return Path(os.environ.get("KAFKA_CACHE_DIR") or CACHE_DIR / "kafka")


def lib_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / version / "lib"


def is_fetched(version: str = KAFKA_VERSION) -> bool:
    return (cache_root() / version / ".complete").is_file()


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "java not found on PATH: Kafka 4.x needs a Java 17+ runtime (Debian: openjdk-17-jre)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # First line looks like: openjdk version "17.0.15" 2025-04-15  (or "1.8.0_392" for Java 8)
    try:
        quoted = out.split('"')[1]
        major = int(quoted.split(".")[1] if quoted.startswith("1.") else quoted.split(".")[0])
    except (IndexError, ValueError):
        return java  # unknown format: let the JVM speak for itself in the log
    if major < 17:
        raise BrokerError(f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java 17 or newer")
    return java


def _pom(version: str) -> str:
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.serving-patterns</groupId>
  <artifactId>kafka-broker-fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Two test sessions (or a test and `make kafka-fetch`) may fetch at once; one waits.
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(version: str = KAFKA_VERSION) -> Path:
    """Copy the broker's runtime jars from Maven Central into the cache once; return the lib dir."""
    root = cache_root() / version
    lib, marker = root / "lib", root / ".complete"
    if marker.is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "mvn not found on PATH: the broker's jars are fetched with Maven (Debian: apt-get install maven)"
        )
    _require_java()
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / ".lock"):
        if marker.is_file():  # someone else finished while we waited for the lock
            return lib
        staging = root / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        _say(f"fetching Kafka {version} (kafka_{SCALA_VERSION} and its runtime jars) with Maven into {lib}")
        with tempfile.TemporaryDirectory(prefix="kafka-fetch-") as tmp:
            (Path(tmp) / "pom.xml").write_text(_pom(version))
            cmd = [
                mvn,
                "-B",
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            output = _run_mvn(cmd, cwd=Path(tmp))
        jars = sorted(staging.glob("*.jar"))
        if not any(j.name == f"kafka_{SCALA_VERSION}-{version}.jar" for j in jars):
            raise BrokerError(f"mvn succeeded but kafka_{SCALA_VERSION}-{version}.jar is missing:\n{output}")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        marker.write_text(json.dumps({"version": version, "jars": [j.name for j in jars]}, indent=1))
        size_mb = sum(j.stat().st_size for j in lib.glob("*.jar")) / 1e6
        _say(f"fetched {len(jars)} jars ({size_mb:.0f} MB) in {time.monotonic() - started:.0f} s")
    return lib


def _run_mvn(cmd: list[str], cwd: Path) -> str:
    """Run mvn, echoing a progress line now and then; return its output, raise with its tail."""
    lines: list[str] = []
    downloads = 0
    with subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "Downloaded from" in line:
                downloads += 1
                if downloads % 100 == 0:
                    _say(f"... {downloads} files downloaded")
    output = "\n".join(lines)
    if proc.returncode != 0:
        tail = "\n".join(lines[-40:])
        raise BrokerError(f"mvn failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return output


# --------------------------------------------------------------------------- processes


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is chosen, so the ports differ from each other.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same flag the JVM sets, so ports lingering in TIME_WAIT after a stop count as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _new_cluster_id() -> str:
    # Kafka's cluster id is a base64url UUID without padding; one starting with '-' would be
    # read as an option by the storage tool, so draw again (Kafka's own generator does too).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _pid_is_broker(pid: int, marker: str) -> bool:
    """True if pid is alive (not a zombie) and is the broker whose command line contains marker."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (not Linux): best effort
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    # A recycled pid belongs to someone else: never signal a process that is not our broker.
    return state != "Z" and "kafka.Kafka" in cmdline and marker in cmdline


def _tail(path: Path, since: int = 0, lines: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"


# --------------------------------------------------------------------------- the broker


class BrokerHandle(Protocol):
    """What fixtures and the stack get: a broker they may (or may not) be allowed to bounce."""

    bootstrap_servers: str
    can_restart: bool

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> str: ...

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None: ...


class Broker:
    """A single-node KRaft broker owning ``data_dir``; start/stop/restart keep the same data and address."""

    can_restart = True

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        stop_at_exit: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.version = version
        self.heap = heap
        self._requested_port = port
        # A broker started from a test or a stack should not outlive the Python process;
        # the CLI's `start` sets this to False on purpose.
        self._stop_at_exit = stop_at_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- files in the data dir
    @property
    def _identity_file(self) -> Path:
        return self.data_dir / "cluster.json"

    @property
    def _state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def _properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _identity(self) -> dict | None:
        try:
            return json.loads(self._identity_file.read_text())
        except FileNotFoundError:
            return None

    def _state(self) -> dict | None:
        try:
            return json.loads(self._state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    # -- public API
    @property
    def bootstrap_servers(self) -> str:
        identity = self._identity()
        if identity is None:
            raise BrokerError(f"no broker has been started in {self.data_dir} yet")
        return f"127.0.0.1:{identity['port']}"

    @property
    def pid(self) -> int | None:
        state = self._state()
        if state and _pid_is_broker(state["pid"], str(self._properties_file)):
            return int(state["pid"])
        return None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        """Start the broker (formatting its storage on first use) and wait until it serves; idempotent."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Two processes starting the same data dir at once would launch two JVMs and overwrite
        # each other's state file; the second one waits here and then finds the first running.
        with _file_lock(self.data_dir / ".start.lock"):
            return self._start_locked(timeout)

    def _start_locked(self, timeout: float) -> str:
        if self.is_running():
            current = self.bootstrap_servers
            if self._requested_port not in (None, self._identity()["port"]):  # type: ignore[index]
                raise BrokerError(f"a broker already runs in {self.data_dir} at {current}; stop it first")
            return current
        lib = lib_dir(self.version) if is_fetched(self.version) else fetch(self.version)
        java = _require_java()
        identity = self._prepare(java, lib)
        port, cport = identity["port"], identity["controller_port"]
        for p in (port, cport):
            if _port_in_use(p):
                raise BrokerError(
                    f"port {p} on 127.0.0.1 is taken by another process; cannot start the broker "
                    f"of {self.data_dir} (pass another port, or remove the dir to start afresh)"
                )

        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{lib}/*",
            "kafka.Kafka",
            str(self._properties_file),
        ]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        bootstrap = f"127.0.0.1:{port}"
        # Recorded before the wait so a `stop` from elsewhere can clean up a broker stuck starting.
        self._state_file.write_text(
            json.dumps(
                {
                    "pid": self._proc.pid,
                    "bootstrap_servers": bootstrap,
                    "data_dir": str(self.data_dir),
                    "kafka_version": self.version,
                    "log_file": str(self.log_file),
                },
                indent=1,
            )
        )
        if self._stop_at_exit and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._wait_until_serving(port, timeout, log_offset)
        except BaseException:
            self.stop()
            raise
        return bootstrap

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the broker, wait for a clean exit (SIGKILL after timeout), forget its state; idempotent."""
        pid = self.pid
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                _say(f"broker pid {pid} ignored SIGTERM for {timeout:.0f} s; killing it")
                self._signal(pid, signal.SIGKILL)
                self._wait_gone(pid, 10.0)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)  # reap, so no zombie lingers in this process
            self._proc = None
        self._state_file.unlink(missing_ok=True)

    def restart(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        self.stop()
        return self.start(timeout=timeout)

    # -- internals
    def _prepare(self, java: str, lib: Path) -> dict:
        """Fix identity (ports, cluster id) on first use, (re)write the configs, format storage once."""
        identity = self._identity()
        if identity is None:
            port, cport = _free_ports(2)
            if self._requested_port is not None:
                port = self._requested_port
                cport = next(p for p in _free_ports(2) if p != port)
            identity = {"cluster_id": _new_cluster_id(), "port": port, "controller_port": cport}
            # Written before formatting: a format that dies is retried with the same cluster id.
            self._identity_file.write_text(json.dumps(identity, indent=1))
        elif self._requested_port is not None and self._requested_port != identity["port"]:
            identity["port"] = self._requested_port
            self._identity_file.write_text(json.dumps(identity, indent=1))

        self._properties_file.write_text(
            _server_properties(self.data_dir, identity["port"], identity["controller_port"])
        )
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        if not (self.data_dir / "kafka-logs" / "meta.properties").exists():
            cmd = [
                java,
                "-Xmx256m",
                "-cp",
                f"{lib}/*",
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                identity["cluster_id"],
                "--config",
                str(self._properties_file),
                "--ignore-formatted",
            ]
            result = subprocess.run(
                cmd, cwd=self.data_dir, capture_output=True, text=True, stdin=subprocess.DEVNULL
            )
            if result.returncode != 0:
                raise BrokerError(
                    f"formatting the broker storage failed (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )
        return identity

    def _wait_until_serving(self, port: int, timeout: float, log_offset: int) -> None:
        try:
            from kafka import KafkaAdminClient
        except ImportError as exc:  # pragma: no cover - kafka-python is a project dependency
            raise BrokerError(
                "kafka-python is needed to check the broker is up: pip install kafka-python"
            ) from exc
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {self._proc.returncode} while starting; "
                    f"{self.log_file}:\n{_tail(self.log_file, log_offset)}"
                )
            if not _accepts_tcp(port):
                time.sleep(0.2)
                continue
            # An open port is not enough: the broker must have joined its own quorum and be
            # unfenced, which is when it lists itself in metadata.
            try:
                remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
                admin = KafkaAdminClient(
                    bootstrap_servers=f"127.0.0.1:{port}",
                    bootstrap_timeout_ms=min(5000, remaining_ms),
                    request_timeout_ms=5000,
                    client_id="broker-readiness",
                )
                try:
                    brokers = admin.describe_cluster().get("brokers", [])
                finally:
                    admin.close()
                if any(b.get("broker_id") == NODE_ID for b in brokers):
                    return
                last_error = f"metadata lists no broker {NODE_ID} yet"
            except Exception as exc:  # any client error just means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
        raise BrokerError(
            f"the broker did not become ready within {timeout:g} s ({last_error}); "
            f"{self.log_file}:\n{_tail(self.log_file, log_offset)}"
        )

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # The broker leads its own session, so its group id is its pid; signalling the group
        # also reaches anything the JVM might have spawned.
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        marker = str(self._properties_file)
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.2)
                if self._proc.poll() is not None:
                    return True
            elif not _pid_is_broker(pid, marker):
                return True
            else:
                time.sleep(0.2)
        return False


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    settings = {
        # Combined broker+controller with a static one-voter quorum: the simplest KRaft setup,
        # and unlike a dynamic (--standalone) quorum it does not pin the controller address
        # into the metadata log.
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": data_dir / "kafka-logs",
        # One node: every internal topic must make do with one replica, or it is never created.
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Fewer internal partitions than the production default of 50: the first consumer group
        # or transaction on a fresh broker then takes moments, not seconds.
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.num.partitions": 4,
        # Nobody else will join: do not hold the first rebalance back waiting for them.
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


LOG4J2_PROPERTIES = """\
# Generated by services/stack/kafka_broker.py: everything to stdout, which start() sends to broker.log.
status = warn
# log4j2's own JVM shutdown hook would stop logging while Kafka's hook is still shutting down.
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
# Per-request and per-partition chatter would bury what matters in the log.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


class ExternalBroker:
    """A cluster someone else runs (``$KAFKA_BOOTSTRAP_SERVERS``): usable, but not ours to stop."""

    can_restart = False

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> str:
        return self.bootstrap_servers

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        raise BrokerError(f"{self.bootstrap_servers} comes from ${ENV_BOOTSTRAP}; it is not ours to stop")


def default_data_dir() -> Path:
    return Path(os.environ.get("KAFKA_DATA_DIR") or RUN_DIR / "kafka")


@contextlib.contextmanager
def managed_broker(data_dir: Path | str | None = None) -> Iterator[BrokerHandle]:
    """Yield a running broker and stop it afterwards, even on error.

    With ``$KAFKA_BOOTSTRAP_SERVERS`` set, yields that cluster and starts nothing. Without a
    ``data_dir`` the broker lives in a fresh temp dir that is removed afterwards.
    """
    external = os.environ.get(ENV_BOOTSTRAP)
    if external:
        yield ExternalBroker(external)
        return
    own_dir = data_dir is None
    path = Path(tempfile.mkdtemp(prefix="kafka-broker-")) if own_dir else Path(data_dir)  # type: ignore[arg-type]
    broker = Broker(path)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        if own_dir:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_broker(data_dir: Path | str | None = None) -> Iterator[str]:
    """Like :func:`managed_broker`, for callers that only need the bootstrap servers string."""
    with managed_broker(data_dir) as broker:
        yield broker.bootstrap_servers


def ensure_broker() -> str:
    """Bootstrap servers of the local stack's broker: ``$KAFKA_BOOTSTRAP_SERVERS``, or the broker in
    :func:`default_data_dir`, started (and left running, like the CLI) if it is not up yet."""
    external = os.environ.get(ENV_BOOTSTRAP)
    if external:
        return external
    return Broker(default_data_dir(), stop_at_exit=False).start()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m services.stack.kafka_broker", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"copy Kafka {KAFKA_VERSION}'s jars from Maven Central into {cache_root()}")
    data_help = f"broker data dir (default: $KAFKA_DATA_DIR or {default_data_dir()})"
    p_start = sub.add_parser("start", help="start the broker in the background; print its bootstrap servers")
    p_start.add_argument(
        "--port", type=int, help="client port on 127.0.0.1 (default: a free one, kept across restarts)"
    )
    p_start.add_argument(
        "--fresh", action="store_true", help="delete the data dir first (all topics are lost)"
    )
    p_start.add_argument(
        "--timeout", type=float, default=DEFAULT_START_TIMEOUT, help="seconds to wait for readiness"
    )
    p_stop = sub.add_parser("stop", help="stop the broker (SIGTERM, then SIGKILL); no-op if not running")
    p_stop.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT, help="seconds before SIGKILL")
    p_status = sub.add_parser("status", help="exit 0 and print pid and address if running, else exit 1")
    for p in (p_start, p_stop, p_status):
        p.add_argument("--data-dir", type=Path, default=None, help=data_help)
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            print(fetch(), file=out)
            return 0
        data_dir = args.data_dir or default_data_dir()
        if args.command == "start":
            if args.fresh:
                Broker(data_dir).stop()
                shutil.rmtree(data_dir, ignore_errors=True)
            broker = Broker(data_dir, port=args.port, stop_at_exit=False)
            _say(f"starting Kafka {KAFKA_VERSION} in {broker.data_dir} (log: {broker.log_file})")
            print(broker.start(timeout=args.timeout), file=out)
            return 0
        broker = Broker(data_dir, stop_at_exit=False)
        if args.command == "stop":
            pid = broker.pid
            broker.stop(timeout=args.timeout)
            _say(f"stopped broker pid {pid}" if pid else f"no broker running in {broker.data_dir}")
            return 0
        pid = broker.pid
        if pid is None:
            print(f"stopped ({broker.data_dir})", file=out)
            return 1
        health = (
            "serving" if _accepts_tcp(int(broker.bootstrap_servers.rsplit(":", 1)[1])) else "not answering"
        )
        print(
            f"running pid={pid} bootstrap={broker.bootstrap_servers} {health} data_dir={broker.data_dir}",
            file=out,
        )
        return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
