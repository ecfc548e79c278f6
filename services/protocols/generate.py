"""Regenerate the Python modules of every wire-protocol package here (``tfs/``, ``oip/``).

Why this script exists: the generated ``*_pb2.py``, ``*_pb2.pyi`` and
``*_pb2_grpc.py`` files are committed, so the serving runtime needs neither
``protoc`` nor ``grpcio-tools``. This script is the one reproducible way to
rebuild them after a ``.proto`` edit or a ``grpcio-tools`` upgrade, and
``--check`` lets CI prove the committed files still match the ``.proto`` files.

Why imports are rewritten: each package keeps its ``.proto`` files under a
proto path of our own (``serving_patterns/<package>/``), so upstream files of
the same base name (TensorFlow's, Triton's) can never be confused with them,
and protoc turns that path into Python imports such as
``from serving_patterns.tfs import tensor_pb2``. The modules actually live in
``services.protocols.<package>``, so every dotted reference is rewritten to it.
The slash-separated proto path inside the serialized descriptors stays
untouched: that is the descriptor-pool file name, and it must stay distinct.

Why ``oip`` gets a pool of its own: its messages have the same full names as
tritonclient's and MLServer's (``inference.ModelInferRequest``; the names must
match for wire compatibility), and protobuf's default pool refuses a second
file defining a symbol it already has. Registering ours in
``services.protocols.oip.pool.POOL`` lets a process import both, e.g. a test
that drives our server with ``tritonclient.grpc``. TF Serving's protos stay in
the default pool (the official client and ours are never imported together;
see ``tfs/README.md``).

Usage, from the repository root, with ``grpcio-tools`` installed::

    python -m services.protocols.generate          # rewrite files
    python -m services.protocols.generate --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROTOCOLS_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_DEFAULT_POOL_ADD = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("


@dataclass(frozen=True)
class Package:
    """One protocol package: ``<name>/protos/serving_patterns/<name>/*.proto`` -> ``<name>/*_pb2*.py``."""

    name: str
    # Module holding a DescriptorPool named POOL; None: protobuf's default pool.
    pool_module: str | None = None

    @property
    def directory(self) -> Path:
        return PROTOCOLS_DIR / self.name

    @property
    def proto_root(self) -> Path:
        return self.directory / "protos"

    @property
    def proto_subdir(self) -> str:
        return f"serving_patterns/{self.name}"

    @property
    def target_package(self) -> str:
        return f"services.protocols.{self.name}"


PACKAGES = (Package("tfs"), Package("oip", pool_module="services.protocols.oip.pool"))


def _note(package: Package) -> str:
    # "ruff: noqa" because generated code follows protoc's style, not ours; the
    # tool's extend-exclude also skips *_pb2*.py, but not the .pyi stubs.
    pool = f"; registered in {package.pool_module}.POOL" if package.pool_module else ""
    return (f"# Post-processed by services.protocols.generate: module paths rewritten to "
            f"{package.target_package}{pool}.\n# ruff: noqa\n")


def _proto_files(package: Package) -> list[str]:
    """Proto paths relative to the package's proto root, sorted so the protoc call is stable."""
    return sorted(p.relative_to(package.proto_root).as_posix()
                  for p in (package.proto_root / package.proto_subdir).glob("*.proto"))


def _run_protoc(package: Package, out_dir: Path) -> None:
    # Imported here so that merely importing this module (e.g. by a linter)
    # does not require grpcio-tools, which is a dev-only dependency.
    from grpc_tools import protoc

    # grpcio-tools ships the well-known types (any.proto, wrappers.proto) here.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{package.proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *_proto_files(package),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {package.name}; see the messages above")


def _post_process(package: Package, name: str, text: str) -> str:
    """Point generated module references at the real package (and the package's pool)."""
    prefix = package.proto_subdir.replace("/", ".")
    rewritten = text.replace(prefix + ".", package.target_package + ".")
    rewritten = rewritten.replace(f"from {prefix} import", f"from {package.target_package} import")
    if prefix in rewritten:
        # A form of reference we do not know how to rewrite: fail loudly rather
        # than commit modules whose imports break at run time.
        raise SystemExit(f"{name}: unexpected reference to {prefix!r} left after rewriting")
    if package.pool_module and name.endswith("_pb2.py"):
        if rewritten.count(_DEFAULT_POOL_ADD) != 1:
            raise SystemExit(f"{name}: protoc's output no longer registers its file the way this script expects")
        rewritten = rewritten.replace(
            _DEFAULT_POOL_ADD,
            f"from {package.pool_module} import POOL as _POOL\nDESCRIPTOR = _POOL.AddSerializedFile(",
        )
    note = _note(package)
    if rewritten.startswith("# -*- coding"):
        # A coding declaration only counts on the first two lines: keep it first.
        first, _, rest = rewritten.partition("\n")
        return f"{first}\n{note}{rest}"
    return note + rewritten


def generate(package: Package) -> dict[str, str]:
    """Run protoc in a scratch directory and return {file name: final text}."""
    with tempfile.TemporaryDirectory(prefix=f"{package.name}_proto_") as tmp:
        out_dir = Path(tmp)
        _run_protoc(package, out_dir)
        result: dict[str, str] = {}
        for path in sorted((out_dir / package.proto_subdir).iterdir()):
            if not path.name.endswith(GENERATED_SUFFIXES):
                continue
            text = path.read_text(encoding="utf-8")
            if path.name.endswith("_pb2_grpc.py") and "class " not in text:
                # The gRPC plugin emits a module for every .proto, even those
                # without a service; an empty module is only noise to review.
                continue
            result[path.name] = _post_process(package, path.name, text)
        return result


def _existing(package: Package) -> dict[str, str]:
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(package.directory.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the committed files are stale")
    args = parser.parse_args(argv)

    status = 0
    for package in PACKAGES:
        wanted = generate(package)
        current = _existing(package)
        stale = sorted(name for name in current.keys() | wanted.keys() if current.get(name) != wanted.get(name))
        if args.check:
            for name in stale:
                diff = difflib.unified_diff(
                    current.get(name, "").splitlines(keepends=True),
                    wanted.get(name, "").splitlines(keepends=True),
                    fromfile=f"committed/{package.name}/{name}",
                    tofile=f"generated/{package.name}/{name}",
                )
                sys.stdout.writelines(list(diff)[:40])
            if stale:
                print(f"{package.name}: stale generated files: {', '.join(stale)}; "
                      "run python -m services.protocols.generate")
                status = 1
            else:
                print(f"{package.name}: {len(wanted)} generated files are up to date")
            continue
        for name in stale:
            path = package.directory / name
            if name in wanted:
                path.write_text(wanted[name], encoding="utf-8")
            else:
                # Left over from a .proto that was removed or renamed.
                path.unlink()
        removed = [name for name in stale if name not in wanted]
        print(f"{package.name}: wrote {len(stale) - len(removed)} file(s), removed {len(removed)}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
