"""A real single-node Kubernetes cluster on this machine: start it, use it, stop it without a trace.

Seven daemons, each a child in its own session with its log under `<run dir>/logs/`:

    etcd                      127.0.0.1:12379 (data in <run dir>/etcd)
    kube-apiserver            https://10.245.0.1:6443 (static tokens, Node,RBAC)
    kube-controller-manager   127.0.0.1:10257
    kube-scheduler            127.0.0.1:10259
    containerd                <run dir>/containerd/containerd.sock (own root/state, cgroupfs)
    kubelet                   10.245.0.1:10250 (root dir <run dir>/kubelet)
    kube-proxy                nftables mode, NodePorts on the node IP only

plus CoreDNS as a Deployment behind 10.96.0.10. `up` records the host's baseline first and
`down` restores it, pass or fail; both are idempotent. One cluster per machine (the bridges,
addresses and ports are fixed): a second `up` elsewhere is refused while one runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.stack.cluster import build, host, images, layout, manifests, pki
from services.stack.cluster.versions import BASE_IMAGE, K8S_VERSION, PAUSE_IMAGE

NODE_NAME = "serving-patterns-node"
API_PORT = 6443
ETCD_CLIENT_PORT = 12379
ETCD_PEER_PORT = 12380
OWNER_FILE = Path("/run/serving-patterns-cluster.json")
MARKER = ".serving-patterns-cluster"
STATE_DIRS = ["containerd", "kubelet", "etcd", "cni", "pod-logs", "pki", "kubeconfigs", "kube-proxy", "kubeconfig"]
DAEMON_ORDER = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
                "kube-proxy"]
# Stopped in this order: the writers first, the node next, the store last.
STOP_ORDER = ["kube-proxy", "kube-scheduler", "kube-controller-manager", "kubelet", "containerd", "kube-apiserver",
              "etcd"]
IDENTITIES = [
    pki.Identity("admin", "serving-patterns-admin", ("system:masters",)),
    pki.Identity("kube-controller-manager", "system:kube-controller-manager"),
    pki.Identity("kube-scheduler", "system:kube-scheduler"),
    pki.Identity("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
    pki.Identity("kube-proxy", "system:kube-proxy"),
]


class ClusterError(RuntimeError):
    pass


class PreflightError(ClusterError):
    """`up` refused before touching anything (not built, not root, another cluster runs): no `down` needed."""


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def dns_lookup(server: str, name: str, timeout: float = 1.0) -> tuple[int, list[str]]:
    """(rcode, A records) for `name` from `server`:53 over UDP: a minimal resolver for the cluster's DNS."""
    qid = int.from_bytes(os.urandom(2), "big")
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, flags, _, an = struct.unpack(">HHHH", data[:8])
    if rid != qid:
        raise OSError("DNS answer for another query")
    pos, out = 12 + len(question) + 4, []
    for _ in range(an):
        while data[pos] and data[pos] < 0xC0:  # the owner name: labels, then a pointer or the root
            pos += data[pos] + 1
        pos += 2 if data[pos] >= 0xC0 else 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return flags & 0x000F, out


def dns_query(server: str, name: str, timeout: float = 1.0) -> list[str]:
    """A records for `name` ([] on NXDOMAIN or any error code)."""
    rcode, addrs = dns_lookup(server, name, timeout)
    return addrs if rcode == 0 else []


@dataclass
class Cluster:
    """One cluster's run dir, credentials and daemons. `up()` / `down()`; or `with running() as c:`."""

    run_dir: Path = layout.DEFAULT_RUN_DIR
    log: Callable[[str], None] = _default_log
    import_base: bool = True
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self._t0 = time.monotonic()

    # --- where things are ---------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"https://{host.NODE_IP}:{API_PORT}"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "pki" / "ca.crt"

    @property
    def token(self) -> str:
        return json.loads((self.run_dir / "pki" / "tokens.json").read_text())["admin"]

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def node_name(self) -> str:
        return NODE_NAME

    def _state_file(self) -> Path:
        return self.run_dir / "state.json"

    def _baseline_file(self) -> Path:
        return self.run_dir / "baseline.json"

    def _say(self, msg: str) -> None:
        self.log(f"[cluster {time.monotonic() - self._t0:5.1f}s] {msg}")

    # --- processes ---------------------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **(env or {})}, cwd=self.run_dir)
        self.procs[name] = proc
        self._save_state()

    def _save_state(self) -> None:
        state = self._load_state()
        pids = state.get("pids", {})
        pids.update({name: p.pid for name, p in self.procs.items()})
        state.update({"pids": pids, "run_dir": str(self.run_dir), "api_url": self.api_url,
                      "kubeconfig": str(self.kubeconfig), "version": K8S_VERSION})
        self._state_file().write_text(json.dumps(state, indent=2))

    def _load_state(self) -> dict:
        try:
            return json.loads(self._state_file().read_text())
        except (OSError, ValueError):
            return {}

    def _recorded_pids(self) -> dict[str, int]:
        return self._load_state().get("pids", {})

    def _alive(self, name: str, pid: int) -> bool:
        """True when `pid` is still the daemon we started (its command line names our binary)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if not cmdline or not cmdline[0]:
            return False
        exe = os.path.basename(cmdline[0].decode(errors="replace"))
        if exe != name:
            return False
        try:  # a zombie child of ours counts as gone
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def _check_running(self, names: list[str]) -> None:
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}; last log lines:\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 25) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, daemons: list[str]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_running(daemons)
            try:
                if check():
                    self._say(f"{what}: ok")
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    # --- helpers for users ----------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(build.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def load_image(self, oci_archive: Path | str) -> list[str]:
        """Import an OCI (or docker) archive into the node's containerd; pods use imagePullPolicy: Never."""
        before = set(self.images())
        out = self.ctr("images", "import", "--no-unpack=false", str(oci_archive)).stdout
        names = [ln.split()[1] for ln in out.splitlines() if ln.startswith("unpacking ")]
        return names or sorted(set(self.images()) - before)

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    def api_get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(self.api_url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def dump_diagnostics(self, out=None, log_lines: int = 30) -> None:
        """Each pod's phase and events and the last log lines of each container; the daemons' log tails."""
        out = out or sys.stderr

        def p(text: str = "") -> None:
            print(text, file=out, flush=True)

        p("=" * 30 + " cluster diagnostics " + "=" * 30)
        for name in DAEMON_ORDER:
            pid = self._recorded_pids().get(name)
            p(f"{name}: pid {pid} {'alive' if pid and self._alive(name, pid) else 'NOT running'}")
        try:
            p(self.kubectl("get", "nodes,pods", "-A", "-o", "wide", check=False, timeout=15).stdout)
            pods = json.loads(self.kubectl("get", "pods", "-A", "-o", "json", timeout=15).stdout)["items"]
            events = json.loads(self.kubectl("get", "events", "-A", "-o", "json", timeout=15).stdout)["items"]
        except Exception as e:  # noqa: BLE001 - the API server may be the problem
            p(f"(API not reachable: {e})")
            pods, events = [], []
        for pod in pods:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            p(f"--- pod {ns}/{name}: {pod['status'].get('phase')}")
            for ev in events:
                obj = ev.get("involvedObject", {})
                if obj.get("kind") == "Pod" and obj.get("name") == name and obj.get("namespace") == ns:
                    p(f"  event {ev.get('type')} {ev.get('reason')}: {ev.get('message', '').strip()}")
            for cs in pod["status"].get("containerStatuses", []):
                p(f"  container {cs['name']}: ready={cs.get('ready')} restarts={cs.get('restartCount')} "
                  f"state={json.dumps(cs.get('state'))}")
                logs = self.kubectl("logs", "-n", ns, name, "-c", cs["name"], f"--tail={log_lines}", check=False,
                                    timeout=15)
                for line in (logs.stdout or logs.stderr).splitlines():
                    p(f"    | {line}")
        for name in DAEMON_ORDER:
            p(f"--- {name} log (last lines)")
            p(self._tail(name, 15))
        p("=" * 81)

    # --- up -----------------------------------------------------------------------------------------------------

    def up(self) -> Cluster:
        """Start everything and wait until the node is Ready and CoreDNS answers (about 20-40 s)."""
        self._t0 = time.monotonic()
        self._preflight()
        self._fresh_run_dir()
        if not self._baseline_file().exists():
            self._baseline_file().write_text(json.dumps(host.snapshot(), indent=1))
        OWNER_FILE.write_text(json.dumps({"run_dir": str(self.run_dir), "pid": os.getpid()}))
        self._save_state()
        baseline = json.loads(self._baseline_file().read_text())
        self._say(f"run dir {self.run_dir}; baseline recorded")
        host.setup_network(baseline)
        self._say(f"network: {host.NODE_BRIDGE} {host.NODE_IP}, firewall table {' '.join(host.FIREWALL_TABLE)}")
        tokens = pki.make_pki(self.run_dir / "pki", host.NODE_IP, host.KUBERNETES_SERVICE_IP, host.CLUSTER_DOMAIN,
                              IDENTITIES)
        pki.write_private(self.run_dir / "pki" / "tokens.json", json.dumps(tokens))
        for ident in IDENTITIES:
            path = self.run_dir / "kubeconfigs" / f"{ident.name}.kubeconfig"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pki.write_private(path, pki.kubeconfig(self.api_url, self.ca_file, ident.user, tokens[ident.name]))
        self._say("certificates and credentials (openssl)")

        self._start_etcd()
        self._start_containerd()
        importer = _Background(self._import_node_images)
        self._wait("etcd", self._etcd_healthy, 30, ["etcd"])
        self._start_apiserver()
        self._wait("kube-apiserver /readyz", lambda: self.api_get("/readyz")[0] == 200, 60,
                   ["etcd", "kube-apiserver"])
        pki.write_private(self.kubeconfig, (self.run_dir / "kubeconfigs" / "admin.kubeconfig").read_text())
        self._start_controller_manager()
        self._start_scheduler()
        importer.join(ClusterError)
        self._start_kubelet()
        self._start_kube_proxy()
        apply = ["apply", "--server-side", "--force-conflicts", "-f", "-"]
        self._wait("CoreDNS manifests applied",
                   lambda: self.kubectl(*apply, check=False, input=manifests.coredns()).returncode == 0, 20,
                   ["etcd", "kube-apiserver"])
        daemons = list(self.procs)
        self._wait(f"node {NODE_NAME} Ready", self._node_ready, 60, daemons)
        self._wait("CoreDNS Deployment available", self._coredns_available, 90, daemons)
        self._wait("CoreDNS answers kubernetes.default", self._dns_answers, 30, daemons)
        if self.import_base and images.BASE_ARCHIVE.is_file():
            self._wait_images([BASE_IMAGE])
        self._say(f"cluster up: {self.api_url}, kubeconfig {self.kubeconfig}")
        return self

    def _fresh_run_dir(self) -> None:
        """Start from an empty run dir (a baseline from a failed `down` is kept: it is the real one)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        marker = self.run_dir / MARKER
        if any(self.run_dir.iterdir()) and not marker.exists():
            raise PreflightError(f"{self.run_dir} is not empty and is not a cluster run dir: choose another --run-dir")
        if host.unmount_under([str(self.run_dir)]):
            raise PreflightError(f"something is still mounted under {self.run_dir}: run `down` first")
        for child in self.run_dir.iterdir():
            if child.name not in (MARKER, "baseline.json"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        marker.write_text("a serving-patterns cluster run dir: `up` empties it, `down` keeps only logs/\n")

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise PreflightError("the cluster needs root (network setup, containerd, kubelet)")
        missing = build.missing_binaries()
        if missing:
            raise PreflightError(f"cluster binaries not built ({', '.join(missing)}): run `make cluster-build` "
                                 "(python -m services.stack.cluster build)")
        pkgs = build.missing_packages()
        if pkgs:
            raise PreflightError(f"missing Debian packages {pkgs}: run `make cluster-build`")
        for archive in (images.PAUSE_ARCHIVE, images.COREDNS_ARCHIVE):
            if not archive.is_file():
                raise PreflightError(f"{archive} is missing: run `make cluster-build`")
        if self._state_file().exists() and any(self._alive(n, p) for n, p in self._recorded_pids().items()):
            raise PreflightError(f"the cluster in {self.run_dir} is already up (`make cluster-down` or `down` first)")
        other = self._other_owner()
        if other is not None:
            raise PreflightError(f"a cluster is already running from {other.run_dir}: "
                                 f"`python -m services.stack.cluster --run-dir {other.run_dir} down` first")
        busy = [f"{ip}:{port}" for ip, port in [("127.0.0.1", ETCD_CLIENT_PORT), ("127.0.0.1", ETCD_PEER_PORT),
                                                ("127.0.0.1", 10248), ("127.0.0.1", 10249), ("127.0.0.1", 10256),
                                                ("127.0.0.1", 10257), ("127.0.0.1", 10259)]
                if not _port_free(ip, port)]
        if busy:
            raise PreflightError(f"ports in use: {busy} (another cluster, or a leftover: run `down`)")

    def _start_etcd(self) -> None:
        data = self.run_dir / "etcd"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        peer, client = f"http://127.0.0.1:{ETCD_PEER_PORT}", f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        self._start("etcd", [
            str(build.binary("etcd")), "--name=sp", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=sp={peer}", "--initial-cluster-state=new",
            "--log-level=warn", "--unsafe-no-fsync", "--quota-backend-bytes=1073741824",
        ])

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health", timeout=1) as resp:
            return json.loads(resp.read()).get("health") == "true"

    def _start_apiserver(self) -> None:
        p = self.run_dir / "pki"
        self._start("kube-apiserver", [
            str(build.binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--bind-address={host.NODE_IP}", f"--advertise-address={host.NODE_IP}", f"--secure-port={API_PORT}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}", f"--token-auth-file={p / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer=https://kubernetes.default.svc.{host.CLUSTER_DOMAIN}",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={host.SERVICE_CIDR}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--kubelet-preferred-address-types=InternalIP", "--allow-privileged=false", "--profiling=false",
            "--event-ttl=1h",
        ])

    def _start_controller_manager(self) -> None:
        kc = self.run_dir / "kubeconfigs" / "kube-controller-manager.kubeconfig"
        p = self.run_dir / "pki"
        self._start("kube-controller-manager", [
            str(build.binary("kube-controller-manager")),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
            "--controllers=*,-nodeipam", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
            f"--service-cluster-ip-range={host.SERVICE_CIDR}", "--cluster-name=serving-patterns",
            "--profiling=false",
        ])

    def _start_scheduler(self) -> None:
        kc = self.run_dir / "kubeconfigs" / "kube-scheduler.kubeconfig"
        self._start("kube-scheduler", [
            str(build.binary("kube-scheduler")),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false", "--profiling=false",
        ])

    def _start_containerd(self) -> None:
        d = self.run_dir / "containerd"
        (d / "root").mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(parents=True, exist_ok=True)
        cni = self.run_dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-serving-patterns.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "serving-patterns",
            "plugins": [{
                "type": "bridge",
                "bridge": host.CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": host.POD_CIDR, "gateway": host.POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(cni / "ipam"),
                },
            }],
        }, indent=2))
        (d / "config.toml").write_text(f"""\
version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{self.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{d / 'runc-v1'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / 'net.d'}"
    max_conf_num = 1
""")
        self._start("containerd", ["containerd", f"--config={d / 'config.toml'}", "--log-level=warn"])

    def _import_node_images(self) -> None:
        self._wait("containerd", lambda: self.ctr("version", check=False, timeout=5).returncode == 0, 30,
                   ["containerd"])
        wanted = [images.PAUSE_ARCHIVE, images.COREDNS_ARCHIVE]
        if self.import_base and images.BASE_ARCHIVE.is_file():
            wanted.append(images.BASE_ARCHIVE)
        for archive in wanted:
            self.load_image(archive)
        self._say(f"images imported: {', '.join(a.name for a in wanted)}")

    def _wait_images(self, names: list[str]) -> None:
        have = set(self.images())
        missing = [n for n in names if n not in have]
        if missing:
            raise ClusterError(f"images not in the node: {missing}")

    def _start_kubelet(self) -> None:
        root = self.run_dir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        p = self.run_dir / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The three settings this machine needs, and the rest of a node that stays to itself.
            "failCgroupV1": False,
            "failSwapOn": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": host.NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(p / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [host.DNS_SERVICE_IP],
            "clusterDomain": host.CLUSTER_DOMAIN,
            "resolvConf": "",
            "podLogsDir": str(self.run_dir / "pod-logs"),
            "volumePluginDir": str(root / "volume-plugins"),
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%"},
            "maxPods": 60,
            "containerLogMaxSize": "5Mi",
            "rotateCertificates": False,
            "protectKernelDefaults": False,
        }
        (root / "config.json").write_text(json.dumps(config, indent=2))
        self._start("kubelet", [
            str(build.binary("kubelet")), f"--config={root / 'config.json'}",
            f"--kubeconfig={self.run_dir / 'kubeconfigs' / 'kubelet.kubeconfig'}",
            f"--root-dir={root}", f"--node-ip={host.NODE_IP}", f"--hostname-override={NODE_NAME}", "--v=1",
        ])

    def _start_kube_proxy(self) -> None:
        d = self.run_dir / "kube-proxy"
        d.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.run_dir / "kubeconfigs" / "kube-proxy.kubeconfig")},
            "mode": "nftables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": host.POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{host.NODE_IP}/32"],
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0 = leave the host's conntrack limits and timeouts as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        }
        (d / "config.json").write_text(json.dumps(config, indent=2))
        self._start("kube-proxy", [str(build.binary("kube-proxy")), f"--config={d / 'config.json'}"])

    def _node_ready(self) -> bool:
        status, body = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        conds = json.loads(body)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def _coredns_available(self) -> bool:
        status, body = self.api_get("/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        return status == 200 and json.loads(body).get("status", {}).get("availableReplicas", 0) >= 1

    def _dns_answers(self) -> bool:
        name = f"kubernetes.default.svc.{host.CLUSTER_DOMAIN}"
        return dns_query(host.DNS_SERVICE_IP, name) == [host.KUBERNETES_SERVICE_IP]

    # --- status ---------------------------------------------------------------------------------------------

    def status(self) -> dict:
        pids = self._recorded_pids()
        daemons = {n: ("running" if pids.get(n) and self._alive(n, pids[n]) else "stopped") for n in DAEMON_ORDER}
        out = {"run_dir": str(self.run_dir), "daemons": daemons, "kubeconfig": str(self.kubeconfig),
               "api_url": self.api_url}
        if daemons["kube-apiserver"] == "running":
            try:
                out["node_ready"] = self._node_ready()
            except Exception as e:  # noqa: BLE001
                out["node_ready"] = f"unknown ({e})"
        return out

    def is_up(self) -> bool:
        return any(v == "running" for v in self.status()["daemons"].values())

    # --- down ---------------------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything in order and restore the host's baseline, pass or fail; idempotent.

        Returns the problems found (empty when the host is as it was)."""
        t0 = time.monotonic()
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave a half-torn host
        try:
            return self._down(t0)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def _other_owner(self) -> Cluster | None:
        """The cluster running from another run dir, if any (then this one must not touch the host)."""
        try:
            owner = json.loads(OWNER_FILE.read_text())
        except (OSError, ValueError):
            return None
        if Path(owner.get("run_dir", "")) == self.run_dir:
            return None
        other = Cluster(Path(owner.get("run_dir", "/nonexistent")), log=self.log)
        return other if any(other._alive(n, p) for n, p in other._recorded_pids().items()) else None

    def _down(self, t0: float) -> list[str]:
        problems: list[str] = []
        other = self._other_owner()
        if other is not None:
            msg = (f"a cluster is running from {other.run_dir}, not from {self.run_dir}: nothing done "
                   f"(`python -m services.stack.cluster --run-dir {other.run_dir} down` stops it)")
            self._say(msg)
            return [msg]
        baseline = None
        with contextlib.suppress(OSError, ValueError):
            baseline = json.loads(self._baseline_file().read_text())
        pids = {**self._recorded_pids(), **{n: p.pid for n, p in self.procs.items()}}
        ours = baseline is not None or bool(pids)  # else the kubepods cgroups are not ours to empty
        for name in STOP_ORDER:
            if name == "containerd" and ours:
                problems += self._stop_containers()
            pid = pids.get(name)
            if pid:
                problems += self._stop_pid(name, pid, grace=10 if name in ("containerd", "etcd") else 5)
        for proc in self.procs.values():  # reap our children
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self.procs.clear()
        problems += self._stop_shims()
        # Mounts under the run dir, and under the fixed dirs that did not exist before (the CNI netns
        # mounts in /run/netns are handled by restore()).
        fixed = [d for d in ("/run/containerd", "/var/lib/kubelet") if baseline and not baseline["paths"].get(d)]
        left = host.unmount_under([str(self.run_dir), *fixed])
        if left:
            problems.append(f"still mounted: {left}")
        problems += host.restore(baseline, self._say)
        problems += self._remove_state()
        if baseline is not None:
            remaining = host.diff(baseline, host.snapshot())
            if remaining:
                problems.append(f"host differs from its baseline: {json.dumps(remaining)}")
        if not problems:
            self._baseline_file().unlink(missing_ok=True)
            self._state_file().unlink(missing_ok=True)
            with contextlib.suppress(OSError, ValueError):
                if json.loads(OWNER_FILE.read_text()).get("run_dir") == str(self.run_dir):
                    OWNER_FILE.unlink()
        for p in problems:
            self._say(f"down: {p}")
        self._say(f"down in {time.monotonic() - t0:.1f}s" + (" (host restored)" if not problems else ""))
        return problems

    def _remove_state(self) -> list[str]:
        """Delete the run's state (images, snapshots, etcd data, keys); keep logs/ to read after the fact."""
        if not self.run_dir.is_dir():
            return []
        prefix = str(self.run_dir) + "/"
        mounted = [m for m in host.mounts() if m.startswith(prefix)]
        if mounted:  # never walk into a mount
            return [f"not removing state: still mounted under {self.run_dir}: {mounted[:5]}"]
        for name in STATE_DIRS:
            path = self.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return []

    def _stop_pid(self, name: str, pid: int, grace: float) -> list[str]:
        if not self._alive(name, pid):
            return []
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._alive(name, pid):
            self._reap(pid)
            time.sleep(0.05)
        if self._alive(name, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            self._reap(pid)
        return [f"{name} (pid {pid}) did not stop"] if self._alive(name, pid) else []

    @staticmethod
    def _reap(pid: int) -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def _stop_containers(self) -> list[str]:
        """Kill every container process in the kubelet's cgroups (faster than API deletes), then the tasks."""
        for _ in range(20):
            pids = host.cgroup_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        left = host.cgroup_pids()
        return [f"container processes left: {left[:10]}"] if left else []

    def _shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes of *our* containerd (its socket path is on their command line)."""
        sock = str(self.containerd_socket).encode()
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"/usr/bin/containerd-shim") and sock in cmd:
                out.append(int(entry.name))
        return out

    def _stop_shims(self) -> list[str]:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._shim_pids()
            if not pids:
                return []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and self._shim_pids():
                time.sleep(0.05)
        left = self._shim_pids()
        return [f"containerd shims left: {left}"] if left else []


class _Background:
    """Run a function in a thread; join() re-raises its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, wrap: type[Exception]) -> None:
        self.thread.join()
        if self.error is not None:
            raise wrap(str(self.error)) from self.error


@contextlib.contextmanager
def running(run_dir: Path | str | None = None, log: Callable[[str], None] = _default_log,
            import_base: bool = True) -> Iterator[Cluster]:
    """`with running(tmp) as c:` -> a Ready cluster; always torn down (host restored) on exit."""
    cluster = Cluster(Path(run_dir) if run_dir else layout.DEFAULT_RUN_DIR, log=log, import_base=import_base)
    try:
        cluster.up()
    except PreflightError:
        raise  # nothing was touched
    except BaseException:
        cluster.down()
        raise
    try:
        yield cluster
    finally:
        cluster.down()
