"""A Kafka broker image for the chart's demo broker (`kafka.enabled`), built here without a registry.

The chart's default broker image (`apache/kafka`) cannot be pulled on this machine, so the cluster
tests build a stand-in with the same layout as the official image, which is what the chart's
StatefulSet relies on:

* `/opt/kafka/bin/kafka-storage.sh` and `/opt/kafka/bin/kafka-server-start.sh` (thin launchers of
  `kafka.tools.StorageTool` and `kafka.Kafka` honouring `KAFKA_HEAP_OPTS` and `LOG_DIR`, as the
  official scripts do);
* `/opt/kafka/libs/*.jar`: the Kafka 4.1.1 runtime jars the project already fetches from Maven
  Central for its local broker (`python -m services.stack.kafka_broker fetch`, in
  `~/.cache/serving-patterns/kafka`);
* `/opt/kafka/config/log4j2.properties`: console logging (the local broker's configuration);
* a Java 17 runtime: a Debian bookworm rootfs from mmdebstrap (minbase + openjdk-17-jre-headless),
  like the cluster's base image.

The result is an OCI archive in `~/.cache/serving-patterns/cluster/images/kafka.tar`, named
`localhost/serving-patterns/kafka:<version>`; it is rebuilt only when its recipe (packages,
mirrors, jar list, launchers) changes. The broker runs read-only as uid 10001 under the chart's
security context: it writes only to its data volume and to /tmp.

    python -m services.stack.cluster kafka-image          # build (or say it is up to date), print the archive
    python -m services.stack.cluster kafka-image --load   # ... and import it into the `make cluster-up` cluster
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.stack import kafka_broker
from services.stack.cluster import images, layout
from services.stack.cluster.versions import DEBIAN_SUITE

KAFKA_VERSION = kafka_broker.KAFKA_VERSION
KAFKA_IMAGE_REPOSITORY = "localhost/serving-patterns/kafka"
KAFKA_IMAGE = f"{KAFKA_IMAGE_REPOSITORY}:{KAFKA_VERSION}"
KAFKA_ARCHIVE = layout.IMAGES_DIR / "kafka.tar"
PACKAGES = ["openjdk-17-jre-headless"]
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"

# The official scripts source kafka-run-class.sh; these do the same few things it does for a broker.
RUN_CLASS = """\
#!/bin/sh
# Stand-in for Apache Kafka's kafka-run-class.sh (serving-patterns test image): java on /opt/kafka/libs
# with KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS and logs to the console (LOG_DIR for GC logs).
set -e
LOG_DIR="${LOG_DIR:-/tmp/kafka-logs}"
mkdir -p "$LOG_DIR"
exec java ${KAFKA_HEAP_OPTS:--Xmx256M} \\
  ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent} \\
  -Djava.awt.headless=true -Djava.io.tmpdir=/tmp -Dkafka.logs.dir="$LOG_DIR" \\
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \\
  ${KAFKA_OPTS} -cp '/opt/kafka/libs/*' "$@"
"""
STORAGE = """\
#!/bin/sh
# kafka-storage.sh (format, info, ...) as in the Apache Kafka distribution.
exec /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool "$@"
"""
SERVER_START = """\
#!/bin/sh
# kafka-server-start.sh <server.properties> as in the Apache Kafka distribution.
if [ $# -lt 1 ]; then echo "USAGE: $0 server.properties" >&2; exit 1; fi
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
"""

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"[kafka image] {msg}", file=sys.stderr, flush=True)


def _files() -> dict[str, bytes]:
    return {
        "opt/kafka/bin/kafka-run-class.sh": RUN_CLASS.encode(),
        "opt/kafka/bin/kafka-storage.sh": STORAGE.encode(),
        "opt/kafka/bin/kafka-server-start.sh": SERVER_START.encode(),
        "opt/kafka/config/log4j2.properties": kafka_broker.LOG4J2_PROPERTIES.encode(),
    }


def recipe() -> str:
    """Everything the image is made of; the archive is rebuilt when this changes."""
    jars = sorted(p.name for p in kafka_broker.lib_dir(KAFKA_VERSION).glob("*.jar"))
    files = hashlib.sha256(json.dumps({k: v.decode() for k, v in _files().items()}, sort_keys=True).encode())
    return json.dumps({"image": KAFKA_IMAGE, "suite": DEBIAN_SUITE, "packages": PACKAGES,
                       "mirrors": images.DEBIAN_MIRRORS, "jars": jars, "files": files.hexdigest()}, sort_keys=True)


def _stamp(archive: Path) -> Path:
    return archive.with_name(archive.name + ".stamp")


def is_current(archive: Path = KAFKA_ARCHIVE) -> bool:
    stamp = _stamp(archive)
    return archive.is_file() and stamp.is_file() and stamp.read_text() == recipe()


def build(log: Log = _say, force: bool = False, archive: Path = KAFKA_ARCHIVE) -> Path:
    """The broker image as an OCI archive (about a minute and a half cold; nothing when current)."""
    if not kafka_broker.is_fetched(KAFKA_VERSION):
        kafka_broker.fetch(KAFKA_VERSION)  # `make test` has done it already (make kafka-fetch)
    want = recipe()
    if not force and is_current(archive):
        log(f"{KAFKA_IMAGE}: up to date ({archive})")
        return archive
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing: run `make cluster-build`")
    archive.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"{KAFKA_IMAGE}: mmdebstrap {DEBIAN_SUITE} minbase + {', '.join(PACKAGES)}, Kafka {KAFKA_VERSION} jars")
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        # man pages stay: openjdk's postinst links its man page with update-alternatives
        rootfs = images.debian_rootfs(Path(tmp), PACKAGES, keep_man=True)
        staged = Path(tmp) / "files"
        files: dict[str, Path] = {}
        for rel, data in _files().items():
            path = staged / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files[f"/{rel}"] = path
        for jar in sorted(kafka_broker.lib_dir(KAFKA_VERSION).glob("*.jar")):
            files[f"/opt/kafka/libs/{jar.name}"] = jar
        layer = images.files_layer(Path(tmp) / "kafka.tar", files)
        config = {
            "Env": [images.PATH_ENV, "LANG=C.UTF-8", f"JAVA_HOME={JAVA_HOME}"],
            "WorkingDir": "/opt/kafka",
            "User": "10001:10001",
            "Cmd": ["/opt/kafka/bin/kafka-server-start.sh", "/etc/kafka/server.properties"],
        }
        images.write_oci_archive(archive, KAFKA_IMAGE, [rootfs, layer], config,
                                 f"serving-patterns test image: Kafka {KAFKA_VERSION} on Debian {DEBIAN_SUITE}")
    _stamp(archive).write_text(want)
    log(f"{KAFKA_IMAGE}: {archive} ({archive.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t0:.0f}s")
    return archive

