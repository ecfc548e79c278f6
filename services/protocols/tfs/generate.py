"""Regenerate the Python modules for the TensorFlow Serving wire-compatible protos.

Why this script exists: the generated ``*_pb2.py``, ``*_pb2.pyi`` and
``*_pb2_grpc.py`` files are committed, so the serving runtime needs neither
``protoc`` nor ``grpcio-tools``. This script is the one reproducible way to
rebuild them after a ``.proto`` edit or a ``grpcio-tools`` upgrade, and
``--check`` lets CI prove the committed files still match the ``.proto`` files.

Why imports are rewritten: the ``.proto`` files live under the proto path
``serving_patterns/tfs/`` (a path of our own, so TensorFlow's files of the same
base name can never be confused with them), and protoc turns that path into
Python imports such as ``from serving_patterns.tfs import tensor_pb2``. The
modules actually live in the package ``services.protocols.tfs``, so
every dotted ``serving_patterns.tfs`` module reference is rewritten to it. The
slash-separated proto path inside the serialized descriptors stays untouched:
that is the descriptor-pool file name, and it must stay distinct from
TensorFlow's.

Usage, from the repository root, with ``grpcio-tools`` installed::

    python -m services.protocols.tfs.generate          # rewrite files
    python -m services.protocols.tfs.generate --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR / "protos"
# Proto-path prefix of our files; it is also what protoc derives module names from.
PROTO_SUBDIR = "serving_patterns/tfs"
GENERATED_MODULE_PREFIX = PROTO_SUBDIR.replace("/", ".")
TARGET_PACKAGE = "services.protocols.tfs"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# "ruff: noqa" because generated code follows protoc's style, not ours; the
# tool's extend-exclude also skips *_pb2*.py, but not the .pyi stubs.
NOTE = (
    f"# Post-processed by {TARGET_PACKAGE}.generate: module paths rewritten to {TARGET_PACKAGE}.\n"
    "# ruff: noqa\n"
)


def _proto_files() -> list[str]:
    """Proto paths relative to PROTO_ROOT, sorted so the protoc call is stable."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / PROTO_SUBDIR).glob("*.proto"))


def _run_protoc(out_dir: Path) -> None:
    # Imported here so that merely importing this module (e.g. by a linter)
    # does not require grpcio-tools, which is a dev-only dependency.
    from grpc_tools import protoc

    # grpcio-tools ships the well-known types (any.proto, wrappers.proto) here.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *_proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def _post_process(text: str) -> str:
    """Point generated module references at the real package."""
    rewritten = text.replace(GENERATED_MODULE_PREFIX + ".", TARGET_PACKAGE + ".")
    rewritten = rewritten.replace(f"from {GENERATED_MODULE_PREFIX} import", f"from {TARGET_PACKAGE} import")
    if GENERATED_MODULE_PREFIX in rewritten:
        # A form of reference we do not know how to rewrite: fail loudly rather
        # than commit modules whose imports break at run time.
        raise SystemExit(f"unexpected reference to {GENERATED_MODULE_PREFIX!r} left after rewriting")
    if rewritten.startswith("# -*- coding"):
        # A coding declaration only counts on the first two lines: keep it first.
        first, _, rest = rewritten.partition("\n")
        return f"{first}\n{NOTE}{rest}"
    return NOTE + rewritten


def generate() -> dict[str, str]:
    """Run protoc in a scratch directory and return {file name: final text}."""
    with tempfile.TemporaryDirectory(prefix="tfs_proto_") as tmp:
        out_dir = Path(tmp)
        _run_protoc(out_dir)
        result: dict[str, str] = {}
        for path in sorted((out_dir / PROTO_SUBDIR).iterdir()):
            text = path.read_text(encoding="utf-8")
            if not path.name.endswith(GENERATED_SUFFIXES):
                continue
            if path.name.endswith("_pb2_grpc.py") and "class " not in text:
                # The gRPC plugin emits a module for every .proto, even those
                # without a service; an empty module is only noise to review.
                continue
            result[path.name] = _post_process(text)
        return result


def _existing() -> dict[str, str]:
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(PACKAGE_DIR.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the committed files are stale")
    args = parser.parse_args(argv)

    wanted = generate()
    current = _existing()
    stale = sorted(name for name in current.keys() | wanted.keys() if current.get(name) != wanted.get(name))

    if args.check:
        for name in stale:
            diff = difflib.unified_diff(
                current.get(name, "").splitlines(keepends=True),
                wanted.get(name, "").splitlines(keepends=True),
                fromfile=f"committed/{name}",
                tofile=f"generated/{name}",
            )
            sys.stdout.writelines(list(diff)[:40])
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run python -m {TARGET_PACKAGE}.generate")
            return 1
        print(f"{len(wanted)} generated files are up to date")
        return 0

    for name in stale:
        path = PACKAGE_DIR / name
        if name in wanted:
            path.write_text(wanted[name], encoding="utf-8")
        else:
            # Left over from a .proto that was removed or renamed.
            path.unlink()
    removed = [name for name in stale if name not in wanted]
    print(f"wrote {len(stale) - len(removed)} file(s), removed {len(removed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
