"""CLI: python -m services.stack.cluster {build,up,down,status,kubeconfig,image,kafka-image}."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from services.stack.cluster import build, images, kafka_image, layout
from services.stack.cluster.cluster import Cluster, ClusterError, PreflightError


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.cluster",
                                     description="a real single-node Kubernetes cluster on this machine")
    parser.add_argument("--run-dir", type=Path, default=layout.DEFAULT_RUN_DIR,
                        help=f"the cluster's state (default {layout.DEFAULT_RUN_DIR})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="install packages, build binaries and images (idempotent)")
    p_build.add_argument("--no-images", action="store_true", help="binaries only")
    p_up = sub.add_parser("up", help="start the cluster and wait until it is Ready")
    p_up.add_argument("--keep-on-failure", action="store_true", help="leave it running when `up` fails")
    p_up.add_argument("--no-base-image", action="store_true", help="do not import the Debian base image")
    sub.add_parser("down", help="stop the cluster and restore the host")
    sub.add_parser("status", help="daemons and node state (JSON)")
    sub.add_parser("kubeconfig", help="print the kubeconfig's path")
    p_image = sub.add_parser("image", help="build the project's Dockerfile with buildah -> OCI archive")
    p_image.add_argument("--load", action="store_true", help="also import it into the running cluster")
    p_image.add_argument("--force", action="store_true", help="rebuild even when the build inputs are unchanged")
    p_kafka = sub.add_parser("kafka-image", help="build the chart's demo Kafka broker image (no registry needed)")
    p_kafka.add_argument("--load", action="store_true", help="also import it into the running cluster")
    p_kafka.add_argument("--force", action="store_true", help="rebuild even when its recipe is unchanged")
    args = parser.parse_args(argv)

    cluster = Cluster(args.run_dir)
    try:
        if args.cmd == "build":
            build.build(with_images=not args.no_images)
            return 0
        if args.cmd == "up":
            cluster.import_base = not args.no_base_image
            signal.signal(signal.SIGTERM, _interrupt)  # `kill` during `up` tears down like Ctrl-C
            t0 = time.monotonic()
            try:
                cluster.up()
            except PreflightError as e:  # refused before touching anything: nothing to tear down
                print(f"cluster up refused: {e}", file=sys.stderr)
                return 1
            except BaseException as e:
                why = f"interrupted ({e or 'Ctrl-C'})" if isinstance(e, KeyboardInterrupt) else str(e)
                print(f"cluster up failed: {why}; tearing down", file=sys.stderr)
                if isinstance(e, Exception) and cluster.kubeconfig.exists():
                    cluster.dump_diagnostics()
                if not args.keep_on_failure or not isinstance(e, Exception):
                    cluster.down()
                return 1
            print(f"cluster is up in {time.monotonic() - t0:.1f}s: {cluster.api_url} "
                  f"(node {cluster.node_name} Ready, CoreDNS at 10.96.0.10)")
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            print(f"kubectl: {build.binary('kubectl')}   stop: make cluster-down")
            return 0
        if args.cmd == "down":
            problems = cluster.down()
            return 1 if problems else 0
        if args.cmd == "status":
            status = cluster.status()
            print(json.dumps(status, indent=2))
            return 0 if cluster.is_up() else 3
        if args.cmd == "kubeconfig":
            if not cluster.kubeconfig.exists():
                print(f"no kubeconfig at {cluster.kubeconfig}: `make cluster-up` first", file=sys.stderr)
                return 1
            print(cluster.kubeconfig)
            return 0
        if args.cmd == "image":
            if not images.DOCKERFILE.exists():
                print(f"no Dockerfile at {images.DOCKERFILE}", file=sys.stderr)
                return 1
            archive = images.build_app_image(build.log, force=args.force)
            print(archive)
            if args.load:
                print("\n".join(cluster.load_image(archive)))
            return 0
        if args.cmd == "kafka-image":
            archive = kafka_image.build(build.log, force=args.force)
            print(archive)
            if args.load:
                print("\n".join(cluster.load_image(archive)))
            return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
