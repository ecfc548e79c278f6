"""Every pinned version of the cluster, in one place.

Kubernetes components are built from the Go module proxy at K8S_VERSION (their staging modules at
K8S_STAGING_VERSION); containerd, runc and the CNI plugins come from Debian 12 (bookworm).
"""

from __future__ import annotations

K8S_VERSION = "v1.37.2"
K8S_STAGING_VERSION = "v0.37.2"  # k8s.io/api, client-go, ... are tagged v0.<minor>.<patch>
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.15.0"
PAUSE_VERSION = "3.10"  # our own static pause binary, tagged like the upstream image

# The images the node uses; none is pulled from a registry (imagePullPolicy: Never).
PAUSE_IMAGE = f"registry.k8s.io/pause:{PAUSE_VERSION}"
COREDNS_IMAGE = f"localhost/serving-patterns/coredns:{COREDNS_VERSION}"
BASE_IMAGE = "localhost/serving-patterns/base:bookworm"

DEBIAN_SUITE = "bookworm"
# Host packages `build` installs with apt-get when missing.
HOST_PACKAGES = [
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "nftables",
    "conntrack",
    "mmdebstrap",
    "openssl",
    "buildah",
]
# What the base image holds on top of minbase (Python 3.11, like the host).
BASE_IMAGE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]
