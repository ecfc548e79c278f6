"""Where the cluster keeps things: build outputs in the cache (outside the checkout), state in a run dir."""

from __future__ import annotations

from services.stack.paths import CACHE_DIR, RUN_DIR

CLUSTER_CACHE = CACHE_DIR / "cluster"
BIN_DIR = CLUSTER_CACHE / "bin"  # etcd, kube-*, kubectl, coredns, pause (+ <name>.stamp)
SRC_DIR = CLUSTER_CACHE / "src"  # the local Go modules the binaries are built from
IMAGES_DIR = CLUSTER_CACHE / "images"  # OCI archives: pause, coredns, base, app
BUILDAH_DIR = CLUSTER_CACHE / "buildah"  # buildah's vfs storage (root, runroot)
DEFAULT_RUN_DIR = RUN_DIR / "cluster"
