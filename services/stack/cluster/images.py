"""Container images without a registry: OCI archives written here, imported with `ctr images import`.

* `pause.tar`   the sandbox image (our static pause binary), tagged as containerd's sandbox_image;
* `coredns.tar` the CoreDNS binary alone;
* `base.tar`    a Debian bookworm rootfs from mmdebstrap (minbase + python3, python3-venv,
                ca-certificates): the `BASE_IMAGE` of the project's Dockerfile and of the tests' pods;
* `app.tar`     the project's Dockerfile built with buildah on top of the base (`image` command),
                named docker.io/library/serving-patterns:<version>: what the chart's default
                `image: serving-patterns` with tag = appVersion resolves to.

An OCI image layout is a few JSON documents and tar layers addressed by sha256; an archive of it
is what `ctr -n k8s.io images import` reads. The image name is the `io.containerd.image.name`
annotation of the index. Layers are written uncompressed (the node unpacks them at once).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from services.stack.cluster import layout
from services.stack.cluster.versions import (
    BASE_IMAGE,
    BASE_IMAGE_PACKAGES,
    COREDNS_IMAGE,
    DEBIAN_SUITE,
    PAUSE_IMAGE,
)
from services.stack.paths import REPO_ROOT

Log = Callable[[str], None]

PAUSE_ARCHIVE = layout.IMAGES_DIR / "pause.tar"
COREDNS_ARCHIVE = layout.IMAGES_DIR / "coredns.tar"
BASE_ARCHIVE = layout.IMAGES_DIR / "base.tar"
APP_ARCHIVE = layout.IMAGES_DIR / "app.tar"
DOCKERFILE = REPO_ROOT / "Dockerfile"

DEBIAN_MIRRORS = [
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main",
]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(out: Path, name: str, layers: list[Path], config: dict, created_by: str) -> Path:
    """An OCI image layout archive holding one image: `layers` are uncompressed tars, in order."""
    layer_digests = [_sha256_file(p) for p in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in layer_digests]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{hashlib.sha256(config_blob).hexdigest()}",
            "size": len(config_blob),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{d}", "size": p.stat().st_size}
            for d, p in zip(layer_digests, layers, strict=True)
        ],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}",
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(config_blob).hexdigest()}", config_blob)
        _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(manifest_blob).hexdigest()}", manifest_blob)
        for digest, path in zip(layer_digests, layers, strict=True):
            info = tar.gettarinfo(str(path), f"blobs/sha256/{digest}")
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)
    return out


def files_layer(out: Path, files: dict[str, Path]) -> Path:
    """A layer tar holding `files` (path in the image -> file on the host), executable, owned by root."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for arcname in sorted(files):
            parts = arcname.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            src = files[arcname]
            info = tar.gettarinfo(str(src), arcname.strip("/"))
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, 0, "", ""
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return out


def _stamp_ok(archive: Path, recipe: str) -> bool:
    stamp = archive.with_name(archive.name + ".stamp")
    return archive.is_file() and stamp.is_file() and stamp.read_text() == recipe


def _write_stamp(archive: Path, recipe: str) -> None:
    archive.with_name(archive.name + ".stamp").write_text(recipe)


def _binary_image(archive: Path, name: str, binary: Path, entrypoint: list[str], user: str, log: Log) -> None:
    stamp = (layout.BIN_DIR / f"{binary.name}.stamp").read_text()
    recipe = f"{name} {entrypoint} {user} {stamp}"
    if _stamp_ok(archive, recipe):
        log(f"image {name}: up to date ({archive})")
        return
    with tempfile.TemporaryDirectory(dir=layout.IMAGES_DIR) as tmp:
        layer = files_layer(Path(tmp) / "layer.tar", {entrypoint[0]: binary})
        config = {"Entrypoint": entrypoint, "Env": [PATH_ENV], "WorkingDir": "/", "User": user}
        write_oci_archive(archive, name, [layer], config, f"serving-patterns: {binary.name}")
    _write_stamp(archive, recipe)
    log(f"image {name}: {archive}")


def build_node_images(log: Log) -> None:
    """The pause and CoreDNS images, from the binaries `build` made."""
    layout.IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    _binary_image(PAUSE_ARCHIVE, PAUSE_IMAGE, layout.BIN_DIR / "pause", ["/pause"], "65535", log)
    _binary_image(COREDNS_ARCHIVE, COREDNS_IMAGE, layout.BIN_DIR / "coredns", ["/coredns"], "65532", log)


def _base_recipe() -> str:
    return f"{BASE_IMAGE} mmdebstrap --variant=minbase {DEBIAN_SUITE} {','.join(BASE_IMAGE_PACKAGES)} {DEBIAN_MIRRORS}"


def debian_rootfs(tmp: Path, packages: list[str], *, keep_man: bool = False) -> Path:
    """A Debian minbase rootfs with `packages` as a tarball in `tmp` (mmdebstrap, reproducible dates)."""
    rootfs = tmp / "rootfs.tar"
    argv = [
        "mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
        f"--include={','.join(packages)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        *([] if keep_man else ["--dpkgopt=path-exclude=/usr/share/man/*"]),
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        DEBIAN_SUITE, str(rootfs), *DEBIAN_MIRRORS,
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "TMPDIR": str(tmp)}
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed:\n{proc.stderr[-4000:]}")
    return rootfs


def build_base_image(log: Log, force: bool = False) -> Path:
    """A Debian bookworm rootfs from mmdebstrap as an OCI archive (about a minute, once)."""
    recipe = _base_recipe()
    if not force and _stamp_ok(BASE_ARCHIVE, recipe):
        log(f"image {BASE_IMAGE}: up to date ({BASE_ARCHIVE})")
        return BASE_ARCHIVE
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing: run `python -m services.stack.cluster build`")
    layout.IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"image {BASE_IMAGE}: mmdebstrap {DEBIAN_SUITE} minbase + {', '.join(BASE_IMAGE_PACKAGES)} (about a minute)")
    with tempfile.TemporaryDirectory(dir=layout.IMAGES_DIR) as tmp:
        rootfs = debian_rootfs(Path(tmp), BASE_IMAGE_PACKAGES)
        config = {"Cmd": ["python3"], "Env": [PATH_ENV, "LANG=C.UTF-8"], "WorkingDir": "/"}
        write_oci_archive(BASE_ARCHIVE, BASE_IMAGE, [rootfs], config, f"mmdebstrap {DEBIAN_SUITE} minbase")
    _write_stamp(BASE_ARCHIVE, recipe)
    log(f"image {BASE_IMAGE}: {BASE_ARCHIVE} ({BASE_ARCHIVE.stat().st_size / 2**20:.0f} MiB) "
        f"in {time.monotonic() - t0:.0f}s")
    return BASE_ARCHIVE


# --- the project's Dockerfile, with buildah -------------------------------------------------------------


def app_image() -> str:
    """The name the Helm chart's default `image` (repository serving-patterns, tag = appVersion) resolves to."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    return f"docker.io/library/serving-patterns:{version}"


def _buildah(*args: str) -> list[str]:
    return [
        "buildah",
        "--root", str(layout.BUILDAH_DIR / "root"),
        "--runroot", str(layout.BUILDAH_DIR / "runroot"),
        "--storage-driver", "vfs",
        *args,
    ]


#: What the Dockerfile reads from its build context (its COPY lines); a change to any of them rebuilds.
APP_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "requirements.lock", "services", "models/repository")
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def app_inputs_digest(context: Path = REPO_ROOT, inputs: tuple[str, ...] = APP_INPUTS) -> str:
    """sha256 over the names and bytes of every build input (byte code and tool caches left out)."""
    h = hashlib.sha256()
    for top in inputs:
        root = context / top
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        if not files:
            h.update(f"missing {top}\n".encode())
        for path in files:
            rel = path.relative_to(context)
            if _IGNORED_PARTS & set(rel.parts) or path.suffix == ".pyc":
                continue
            h.update(f"{rel}\n".encode())
            h.update(_sha256_file(path).encode())
    return h.hexdigest()


def build_app_image(log: Log, dockerfile: Path = DOCKERFILE, tag: str | None = None,
                    out: Path = APP_ARCHIVE, build_args: dict[str, str] | None = None, force: bool = False) -> Path:
    """`buildah bud` of the project's Dockerfile on the base image -> an OCI archive for `ctr import`.

    chroot isolation and vfs storage (no daemon, no overlay-in-overlay); the host's CA bundle is
    mounted into RUN steps (without it, pip's TLS to the package registries fails here). `tag`
    defaults to `app_image()`, the name the chart's default image resolves to in containerd.
    Skipped (the archive is returned as it is) when the archive's stamp holds the same recipe: the
    tag, the build args, the base image's recipe and `app_inputs_digest()` of the build context.
    """
    tag = tag or app_image()
    if not dockerfile.is_file():
        raise FileNotFoundError(f"no Dockerfile at {dockerfile}")
    recipe = json.dumps({"tag": tag, "dockerfile": str(dockerfile), "build_args": build_args or {},
                         "base": _base_recipe(), "inputs": app_inputs_digest(dockerfile.parent)}, sort_keys=True)
    if not force and _stamp_ok(out, recipe):
        log(f"image {tag}: up to date ({out}; build inputs unchanged)")
        return out
    if shutil.which("buildah") is None:
        raise RuntimeError("buildah is missing: run `python -m services.stack.cluster build`")
    base = build_base_image(log)
    layout.BUILDAH_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    env = {**os.environ, "TMPDIR": str(layout.BUILDAH_DIR / "tmp"), "BUILDAH_ISOLATION": "chroot"}
    (layout.BUILDAH_DIR / "tmp").mkdir(exist_ok=True)

    def run(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv[:8])} ...` failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
        return proc.stdout

    # The base under its own name in buildah's storage (re-pulled when the archive changed).
    base_id = run(_buildah("pull", "--quiet", f"oci-archive:{base}")).strip().splitlines()[-1]
    run(_buildah("tag", base_id, BASE_IMAGE))
    log(f"buildah: base {BASE_IMAGE} ({base_id[:12]}); building {dockerfile.name} -> {tag}")
    args = {"BASE_IMAGE": BASE_IMAGE, **(build_args or {})}
    argv = _buildah(
        "bud",
        "--isolation", "chroot",
        "--pull-never",
        "--layers=false",
        "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
        *(x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")),
        "-f", str(dockerfile),
        "-t", tag,
        str(dockerfile.parent),
    )
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah bud failed:\n{proc.stdout[-8000:]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    run(_buildah("push", "--quiet", tag, f"oci-archive:{tmp}:{tag}"))
    tmp.replace(out)
    _write_stamp(out, recipe)
    # vfs keeps a full copy per layer: drop the built image (the archive is the product), keep the base.
    run(_buildah("rmi", "--force", tag))
    subprocess.run(_buildah("rmi", "--prune"), capture_output=True, env=env)
    log(f"image {tag}: {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t0:.0f}s")
    return out
