"""Build everything the cluster runs, once, into the cache (outside the repository).

* host packages from Debian with apt-get, when missing (containerd, runc, CNI plugins, iptables,
  nftables, conntrack, mmdebstrap, openssl, buildah);
* Go binaries into `CACHE_DIR/cluster/bin`: etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler, kubelet, kube-proxy, kubectl, coredns and a static pause binary.

Each binary has a stamp (`<name>.stamp`) holding what it was built from; a binary whose stamp
matches is not rebuilt. Go's own caches are the default ones (`go env GOMODCACHE GOCACHE`, i.e.
~/go/pkg/mod and ~/.cache/go-build), shared with every other Go build on the machine.

Kubernetes cannot be `go install`ed (its go.mod has `replace` lines for its staging modules), so
the binaries come from a local module that requires k8s.io/kubernetes and replaces each staging
module with the published one at K8S_STAGING_VERSION; the list is read from k8s.io/kubernetes's
own go.mod, so a version bump needs no edit here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from services.stack.cluster import layout
from services.stack.cluster.versions import (
    COREDNS_VERSION,
    ETCD_VERSION,
    HOST_PACKAGES,
    K8S_STAGING_VERSION,
    K8S_VERSION,
    PAUSE_VERSION,
)

K8S_COMMANDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"]
ALL_BINARIES = ["etcd", *K8S_COMMANDS, "coredns", "pause"]

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[cluster build {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


# --- host packages ---------------------------------------------------------------------------------


def missing_packages(packages: list[str] = HOST_PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def install_packages(packages: list[str] = HOST_PACKAGES) -> None:
    missing = missing_packages(packages)
    if not missing:
        log(f"host packages present ({', '.join(packages)})")
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"missing Debian packages {missing}: run as root (apt-get install)")
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    try:
        _run(["apt-get", *lock, "install", "-y", "--no-install-recommends", *missing], env=env)
    except RuntimeError:
        log("apt-get install failed; apt-get update and retry")
        _run(["apt-get", *lock, "update"], env=env)
        _run(["apt-get", *lock, "install", "-y", "--no-install-recommends", *missing], env=env)
    still = missing_packages(packages)
    if still:
        raise RuntimeError(f"apt-get did not install {still}")
    log("host packages installed")


# --- Go binaries -------------------------------------------------------------------------------------


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError("building the cluster needs the Go toolchain (`go` on PATH)")
    return go


def _go_env() -> dict[str, str]:
    # Default GOMODCACHE/GOCACHE; no VCS stamping (the module cache is not a repository).
    return {**os.environ, "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}


def _k8s_ldflags() -> str:
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={K8S_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _recipe(name: str) -> str:
    """What a binary is built from: when this changes, the binary is rebuilt."""
    go_version = _run([_go(), "env", "GOVERSION"]).strip()
    if name in K8S_COMMANDS:
        return f"k8s.io/kubernetes/cmd/{name}@{K8S_VERSION} {go_version} {_k8s_ldflags()}"
    if name == "etcd":
        return f"go.etcd.io/etcd/server/v3@{ETCD_VERSION} {go_version} -s -w"
    if name == "coredns":
        return f"github.com/coredns/coredns@{COREDNS_VERSION} {go_version} -s -w"
    if name == "pause":
        return f"pause {PAUSE_VERSION} {go_version} {PAUSE_SOURCE}"
    raise KeyError(name)


def binary(name: str) -> Path:
    return layout.BIN_DIR / name


def is_built(name: str) -> bool:
    path, stamp = binary(name), layout.BIN_DIR / f"{name}.stamp"
    return path.is_file() and os.access(path, os.X_OK) and stamp.is_file() and stamp.read_text() == _recipe(name)


def missing_binaries() -> list[str]:
    """Binaries not built (a cheap check without Go: a binary and a stamp file)."""
    return [n for n in ALL_BINARIES if not (binary(n).is_file() and (layout.BIN_DIR / f"{n}.stamp").is_file())]


def _stamp(name: str) -> None:
    (layout.BIN_DIR / f"{name}.stamp").write_text(_recipe(name))


def _k8s_module() -> Path:
    """The local module that builds k8s.io/kubernetes's commands with the published staging modules."""
    src = layout.SRC_DIR / f"k8s-{K8S_VERSION}"
    if (src / ".ready").exists():
        return src
    go, env = _go(), _go_env()
    src.mkdir(parents=True, exist_ok=True)
    log(f"k8s.io/kubernetes@{K8S_VERSION}: downloading the module (once; ~1.9 GB module cache with its deps)")
    info = json.loads(_run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{K8S_VERSION}"], cwd=src, env=env))
    upstream = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go (\S+)$", upstream, re.M)
    block = re.search(r"^replace \($(.*?)^\)$", upstream, re.M | re.S)
    if not (go_line and block):
        raise RuntimeError(f"unexpected k8s.io/kubernetes go.mod at {info['GoMod']}")
    staging = re.findall(r"^\s*(\S+)\s+=>\s+\./staging/", block.group(1), re.M)
    lines = [
        "module local/serving-patterns/k8s-build",
        "",
        f"go {go_line.group(1)}",
        "",
        f"require k8s.io/kubernetes {K8S_VERSION}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {K8S_STAGING_VERSION}" for mod in staging),
        ")",
        "",
    ]
    (src / "go.mod").write_text("\n".join(lines))
    log(f"local module with {len(staging)} staging replace lines: {src}")
    (src / ".ready").write_text(K8S_VERSION)
    return src


def _go_build(name: str, pkg: str, cwd: Path, ldflags: str) -> None:
    t0 = time.monotonic()
    out = binary(name)
    tmp = out.with_name(f".{name}.tmp")
    argv = ["nice", "-n", "10", _go(), "build", "-mod=mod", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), pkg]
    _run(argv, cwd=cwd, env=_go_env())
    tmp.replace(out)
    _stamp(name)
    log(f"built {name} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t0:.0f}s")


def _build_k8s(name: str) -> None:
    src = _k8s_module()
    log(f"building {name} {K8S_VERSION} (cold: minutes)")
    _go_build(name, f"k8s.io/kubernetes/cmd/{name}", src, _k8s_ldflags())


def _build_etcd() -> None:
    src = layout.SRC_DIR / f"etcd-{ETCD_VERSION}"
    go, env = _go(), _go_env()
    if not (src / ".ready").exists():
        log(f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}: fetching the module and its dependencies")
        src.mkdir(parents=True, exist_ok=True)
        if not (src / "go.mod").exists():
            _run([go, "mod", "init", "local/serving-patterns/etcd-build"], cwd=src, env=env)
        _run([go, "get", "-tool", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], cwd=src, env=env)
        (src / ".ready").write_text(ETCD_VERSION)
    log(f"building etcd {ETCD_VERSION}")
    _go_build("etcd", "go.etcd.io/etcd/server/v3", src, "-s -w")


def _build_coredns() -> None:
    src = layout.SRC_DIR / f"coredns-{COREDNS_VERSION}"
    go, env = _go(), _go_env()
    if not (src / ".ready").exists():
        log(f"github.com/coredns/coredns@{COREDNS_VERSION}: fetching the module and its dependencies")
        src.mkdir(parents=True, exist_ok=True)
        if not (src / "go.mod").exists():
            _run([go, "mod", "init", "local/serving-patterns/coredns-build"], cwd=src, env=env)
        _run([go, "get", "-tool", f"github.com/coredns/coredns@{COREDNS_VERSION}"], cwd=src, env=env)
        (src / ".ready").write_text(COREDNS_VERSION)
    log(f"building coredns {COREDNS_VERSION}")
    _go_build("coredns", "github.com/coredns/coredns", src, "-s -w")


# The sandbox's init process: sleeps until SIGTERM/SIGINT and reaps orphans (it is PID 1 when the
# pod shares a PID namespace). Static (CGO_ENABLED=0), so the image needs nothing else.
PAUSE_SOURCE = """package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
"""


def _build_pause() -> None:
    src = layout.SRC_DIR / "pause"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module local/serving-patterns/pause\n\ngo 1.22\n")
    (src / "main.go").write_text(PAUSE_SOURCE)
    log(f"building pause {PAUSE_VERSION}")
    _go_build("pause", ".", src, "-s -w")


BUILDERS = {
    "etcd": _build_etcd,
    "coredns": _build_coredns,
    "pause": _build_pause,
    **{name: (lambda n=name: _build_k8s(n)) for name in K8S_COMMANDS},
}


def build_binaries(names: list[str] | None = None) -> None:
    layout.BIN_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or ALL_BINARIES:
        if is_built(name):
            log(f"{name}: up to date ({binary(name)})")
            continue
        BUILDERS[name]()


def build(with_images: bool = True) -> None:
    """Idempotent: packages, binaries, then the node's images (pause, coredns, base)."""
    install_packages()
    build_binaries()
    if with_images:
        from services.stack.cluster import images

        images.build_node_images(log)
        images.build_base_image(log)
    log("done")
