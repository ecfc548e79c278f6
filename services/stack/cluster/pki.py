"""The cluster's certificates and credentials, made with openssl (EC P-256: fast to generate).

    ca.crt / ca.key                    the cluster CA (clients, kubelet client auth)
    apiserver.crt / .key               serving cert: node IP, Service IP, kubernetes.default.svc...
    apiserver-kubelet-client.crt/.key  the API server's client cert towards the kubelet
    sa.key / sa.pub                    service-account token signing key
    front-proxy-ca.crt / .key          request-header CA (published, never used to sign anything)
    tokens.csv                         static bearer tokens: admin (system:masters) and each component
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    name: str  # kubeconfig file stem
    user: str
    groups: tuple[str, ...] = ()


def write_private(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner only from the first byte: a temporary file created
    0600 (O_CREAT | O_EXCL, whatever the umask) beside it, then renamed over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _openssl(*args: str, cwd: Path) -> None:
    # umask 077: a key openssl writes is never readable by others, not even before the chmod below
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, umask=0o077)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:3])} failed: {proc.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path.name, cwd=path.parent)
    path.chmod(0o600)


def _signed(pki: Path, name: str, subject: str, ext: str) -> None:
    _key(pki / f"{name}.key")
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "365", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def make_pki(pki: Path, node_ip: str, service_ip: str, cluster_domain: str,
             identities: list[Identity]) -> dict[str, str]:
    """Write every file into `pki`; returns {identity name: bearer token}."""
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    _key(pki / "ca.key")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=serving-patterns-cluster-ca", "-days", "3650",
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", "ca.crt", cwd=pki)
    # The request-header CA (aggregation's front proxy): no client cert is ever issued from it; the API
    # server publishes it so the controller-manager's and scheduler's delegated authentication is complete.
    _key(pki / "front-proxy-ca.key")
    _openssl("req", "-x509", "-new", "-key", "front-proxy-ca.key", "-subj", "/CN=serving-patterns-front-proxy-ca",
             "-days", "3650", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", "front-proxy-ca.crt",
             cwd=pki)
    sans = [f"IP:{node_ip}", f"IP:{service_ip}", "IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", f"DNS:kubernetes.default.svc.{cluster_domain}"]
    _signed(pki, "apiserver", "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n")
    _signed(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n")
    _key(pki / "sa.key")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    tokens = {i.name: secrets.token_hex(24) for i in identities}
    lines = [f'{tokens[i.name]},{i.user},{i.user},"{",".join(i.groups)}"' for i in identities]
    write_private(pki / "tokens.csv", "\n".join(lines) + "\n")
    return tokens


def kubeconfig(server: str, ca_file: Path, user: str, token: str, cluster: str = "serving-patterns") -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority: {ca_file}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
"""
