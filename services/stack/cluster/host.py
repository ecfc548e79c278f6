"""The host side of the cluster: its network (two bridges, a firewall table) and the baseline.

Network, all on bridges that have no outside port:

    sp-node0   10.245.0.1/32      the node IP (never loopback: the kubelet refuses it); the API
                                  server and the kubelet bind here; a route sends the Service
                                  range here so host -> Service traffic never picks eth0.
    sp-cni0    10.244.0.1/24      the pod network (CNI bridge plugin, host-local IPAM, no masquerade)
    Services   10.96.0.0/24       ClusterIPs, programmed by kube-proxy (nftables mode)

The table `inet serving_patterns_cluster` drops any packet to or from those ranges that would
leave (or arrive) through another interface, and any forwarding except pod <-> pod on sp-cni0
(all forwarding, when the host did not forward before).

`snapshot()` records what the cluster may change (sysctls, links, addresses, routes, network
namespaces, mounts, firewall tables, cgroups, the kubelet's and containerd's fixed dirs);
`restore()` puts it back and `diff()` compares two snapshots.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

NODE_BRIDGE = "sp-node0"
CNI_BRIDGE = "sp-cni0"
NODE_IP = "10.245.0.1"
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
OUR_LINKS = (NODE_BRIDGE, CNI_BRIDGE)
FIREWALL_TABLE = ("inet", "serving_patterns_cluster")

# Sysctls the kubelet, kube-proxy, the bridge plugin or we may set.
SYSCTLS = [
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
]
# Paths with a fixed location that the kubelet, containerd or the CNI plugins create.
FIXED_PATHS = [
    "/run/netns",
    "/var/run/netns",
    "/run/containerd",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
    "/run/mount",  # libmount's utab dir, made by the kubelet's mount calls: removed only when empty
]
SHARED_DIRS = {"/run/mount"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBE_CGROUPS = ("kubepods", "kubepods.slice")
MOUNT_PREFIXES = ("/run/netns", "/var/run/netns", "/run/containerd", "/var/lib/kubelet")


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        return " ".join(_sysctl_path(key).read_text().split())
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value)


def nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    return sorted(" ".join(line.split()[1:]) for line in sh("nft", "list", "tables", check=False).splitlines()
                  if line.startswith("table "))


def _legacy_iptables() -> str:
    """`iptables-legacy-save` (x_tables in the kernel), with counters stripped."""
    if shutil.which("iptables-legacy-save") is None:
        return ""
    out = sh("iptables-legacy-save", check=False)
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#")).replace("[0:0]", "")


def mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        points.append(fields[4].encode().decode("unicode_escape"))
    return points


def kube_cgroups() -> list[str]:
    found = []
    if CGROUP_ROOT.is_dir():
        for hier in sorted(CGROUP_ROOT.iterdir()):
            for name in KUBE_CGROUPS:
                if (hier / name).is_dir():
                    found.append(str(hier / name))
    return found


def _links() -> list[str]:
    return sorted(f"{link['ifname']} {link.get('link_type', '')}" for link in json.loads(sh("ip", "-j", "link")))


def _addrs() -> list[str]:
    out = []
    for link in json.loads(sh("ip", "-j", "addr")):
        for a in link.get("addr_info", []):
            if a.get("scope") != "link":
                out.append(f"{link['ifname']} {a['local']}/{a['prefixlen']}")
    return sorted(out)


def _routes() -> list[str]:
    lines = sh("ip", "route", "show", "table", "all").splitlines()
    lines += sh("ip", "-6", "route", "show", "table", "all").splitlines()
    return sorted({ln.strip() for ln in lines})


def snapshot() -> dict:
    return {
        "sysctls": {k: read_sysctl(k) for k in SYSCTLS},
        "links": _links(),
        "addresses": _addrs(),
        "routes": _routes(),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None,
        "mounts": sorted(set(mounts())),
        "nft_tables": nft_tables(),
        "iptables_legacy": _legacy_iptables(),
        "cgroups": kube_cgroups(),
        "paths": {p: os.path.lexists(p) for p in FIXED_PATHS},
    }


def diff(before: dict, after: dict) -> dict:
    """What differs between two snapshots ({} when nothing does)."""
    out = {}
    for key in before:
        b, a = before[key], after.get(key)
        if b == a:
            continue
        if isinstance(b, dict) and isinstance(a, dict):
            out[key] = {k: (b.get(k), a.get(k)) for k in sorted(set(b) | set(a)) if b.get(k) != a.get(k)}
        elif isinstance(b, list) and isinstance(a, list):
            out[key] = {"gone": sorted(set(b) - set(a)), "new": sorted(set(a) - set(b))}
        else:
            out[key] = (b, a)
    return out


# --- network setup -------------------------------------------------------------------------------------


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def firewall_rules(forward_before: bool) -> str:
    """The nft table that keeps the cluster's packets on its own bridges."""
    family, table = FIREWALL_TABLE
    ours = f'{{ "lo", "{NODE_BRIDGE}", "{CNI_BRIDGE}" }}'
    ranges = f"{{ {POD_CIDR}, {SERVICE_CIDR}, {NODE_IP} }}"
    policy = "accept" if forward_before else "drop"
    return f"""
table {family} {table} {{
    chain prerouting {{
        type filter hook prerouting priority -310; policy accept;
        iifname {ours} accept
        ip saddr {ranges} drop
        ip daddr {ranges} drop
    }}
    chain forward {{
        type filter hook forward priority -10; policy {policy};
        iifname "{CNI_BRIDGE}" oifname "{CNI_BRIDGE}" accept
        iifname "{CNI_BRIDGE}" drop
        oifname "{CNI_BRIDGE}" drop
        ip saddr {ranges} drop
        ip daddr {ranges} drop
    }}
    chain postrouting {{
        type filter hook postrouting priority -10; policy accept;
        oifname {ours} accept
        ip saddr {ranges} drop
        ip daddr {ranges} drop
    }}
}}
"""


def setup_network(baseline: dict) -> None:
    """Firewall first, then the node bridge and the Service route; forwarding on (the pods need it)."""
    family, table = FIREWALL_TABLE
    if f"{family} {table}" in nft_tables():
        sh("nft", "delete", "table", family, table)
    forward_before = baseline["sysctls"].get("net.ipv4.ip_forward") == "1"
    sh("nft", "-f", "-", input=firewall_rules(forward_before))
    if not _link_exists(NODE_BRIDGE):
        sh("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
    sh("ip", "addr", "replace", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
    sh("ip", "link", "set", NODE_BRIDGE, "up")
    sh("ip", "route", "replace", SERVICE_CIDR, "dev", NODE_BRIDGE, "src", NODE_IP)
    write_sysctl("net.ipv4.ip_forward", "1")
    write_sysctl("net.bridge.bridge-nf-call-iptables", "1")


# --- teardown ---------------------------------------------------------------------------------------------


def unmount_under(prefixes: list[str]) -> list[str]:
    """Unmount every mount point under one of `prefixes`, deepest first. Returns what stays mounted."""
    prefixes = [p.rstrip("/") for p in prefixes]

    def ours(point: str) -> bool:
        return any(point == p or point.startswith(p + "/") for p in prefixes)

    for _ in range(3):
        points = [p for p in mounts() if ours(p)]
        if not points:
            return []
        for point in sorted(set(points), key=lambda p: (-p.count("/"), p)):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
    return sorted({p for p in mounts() if ours(p)})


def remove_cgroups() -> list[str]:
    """rmdir the kubelet's cgroup trees (kubepods) bottom-up in every hierarchy. Returns leftovers."""
    left = []
    for top in kube_cgroups():
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for d in dirs:
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
    return left


def cgroup_pids() -> list[int]:
    pids: set[int] = set()
    for top in kube_cgroups():
        for d, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
                except OSError:
                    pass
    return sorted(pids)


def _iptables_tables_to_drop(baseline_tables: list[str]) -> list[str]:
    """New iptables-nft tables that hold only the kubelet's KUBE-* chains and jumps to them."""
    builtin = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
    drop = []
    for entry in nft_tables():
        family, name = entry.split()
        if entry in baseline_tables or family not in ("ip", "ip6"):
            continue
        if name not in ("filter", "nat", "mangle", "raw", "security"):
            continue
        chain, kube_chains, foreign = None, 0, False
        for line in sh("nft", "list", "table", family, name, check=False).splitlines():
            words = line.split()
            if not words or words[0] in ("table", "}", "type", "policy") or words[0].startswith("#"):
                continue
            if words[0] == "chain":
                chain = words[1]
                if chain.startswith("KUBE-"):
                    kube_chains += 1
                elif chain not in builtin:
                    foreign = True
            elif chain in builtin and "KUBE-" not in line:
                foreign = True  # a rule someone else put in a built-in chain
        if kube_chains and not foreign:
            drop.append(entry)
    return drop


def restore(baseline: dict | None, log) -> list[str]:
    """Put the host back as recorded; also works without a baseline (removes what is surely ours).

    Call after every cluster process has stopped. Returns problems (empty when all is restored).
    """
    problems: list[str] = []
    base_tables = baseline["nft_tables"] if baseline else []
    # Firewall: our table, kube-proxy's, and iptables-nft tables the kubelet created.
    for entry in ["inet serving_patterns_cluster", "ip kube-proxy", "ip6 kube-proxy",
                  *_iptables_tables_to_drop(base_tables)]:
        if entry in nft_tables() and entry not in base_tables:
            family, name = entry.split()
            if subprocess.run(["nft", "delete", "table", family, name], capture_output=True).returncode != 0:
                problems.append(f"could not delete nft table {entry}")
    # Links: our bridges and the veths left on them (their pod ends died with the netns).
    for name in OUR_LINKS:
        if _link_exists(name):
            for port in json.loads(sh("ip", "-j", "link", "show", "master", name, check=False) or "[]"):
                subprocess.run(["ip", "link", "del", port["ifname"]], capture_output=True)
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    if baseline:
        for line in sorted(set(_routes()) - set(baseline["routes"])):
            if any(r in line for r in (POD_CIDR, SERVICE_CIDR, NODE_IP, *OUR_LINKS)):
                subprocess.run(["ip", "route", "del", *line.split()], capture_output=True)
        # Sysctls.
        for key, value in baseline["sysctls"].items():
            now = read_sysctl(key)
            if value is not None and now is not None and now != value:
                try:
                    write_sysctl(key, value)
                except OSError as e:
                    problems.append(f"sysctl {key}: could not restore {value!r} (now {now!r}): {e}")
    # Network namespaces the CRI plugin made (cni-<uuid>), and /run/netns itself when it is new.
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        before = set(baseline["netns"] or []) if baseline else set()
        for entry in netns_dir.iterdir():
            if entry.name.startswith("cni-") and entry.name not in before:
                subprocess.run(["umount", str(entry)], capture_output=True)
                try:
                    entry.unlink()
                except OSError as e:
                    problems.append(f"netns {entry}: {e}")
    # Fixed paths that did not exist before.
    if baseline:
        for path, existed in baseline["paths"].items():
            if not existed and path in SHARED_DIRS and os.path.isdir(path):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                if os.path.lexists(path):
                    problems.append(f"{path} is not empty: {os.listdir(path)}")
            elif not existed and os.path.lexists(path) and not os.path.islink(path):
                leftovers = unmount_under([path])
                if leftovers:
                    problems.append(f"still mounted: {leftovers}")
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    problems.append(f"could not remove {path}")
    if baseline is not None and not baseline["cgroups"]:  # the kubepods trees are ours only if they are new
        left = remove_cgroups()
        if left:
            problems.append(f"cgroups left: {left[:5]}")
    conntrack = shutil.which("conntrack")
    if conntrack:  # forget the cluster's connections (harmless if none)
        for cidr, mask in ((POD_CIDR, "255.255.255.0"), (SERVICE_CIDR, "255.255.255.0")):
            net = cidr.split("/")[0]
            for flag, mflag in (("-s", "--mask-src"), ("-d", "--mask-dst")):
                subprocess.run([conntrack, "-D", flag, net, mflag, mask], capture_output=True)
    for p in problems:
        log(f"restore: {p}")
    return problems
