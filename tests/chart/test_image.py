"""The image definition, checked without building it (buildah / docker come with the cluster session).

- the Dockerfile's shape: BASE_IMAGE build arg defaulting to an official slim Python 3.11, a
  builder stage with a venv, python3 by PATH, numeric non-root user 10001, the model repository
  baked in, every entry point import-checked at build time;
- the runtime dependencies (pyproject's [project.dependencies] and what they pull in) are all
  pinned in requirements.lock, and none is TensorFlow;
- every service entry point imports with the runtime dependencies alone (dev and training
  packages blocked), i.e. it will start in the image;
- ENV names the Dockerfile sets are settings fields; .dockerignore keeps venvs, state and caches out.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from services.stack import helm as helm_tool
from services.stack.paths import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
ENTRY_POINTS = [*helm_tool.SERVICES, "services.kafka.publisher"]


def _instructions() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_shape():
    lines = _instructions()
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm", lines[0]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE} AS builder", "FROM ${BASE_IMAGE} AS runtime"]
    assert "USER 10001:0" in lines
    assert lines.index("USER 10001:0") > lines.index("FROM ${BASE_IMAGE} AS runtime")
    assert any(line.startswith("COPY models/repository ") for line in lines)
    assert any(line.startswith("COPY --from=builder /opt/venv /opt/venv") for line in lines)
    runs = " ".join(line for line in lines if line.startswith("RUN "))
    assert "python3 -m venv /opt/venv" in runs and "--constraint requirements.lock" in runs
    assert not re.search(r"(^|[\s;&|])python(\s|$)", runs), "call python3 by PATH, not python"
    assert "tensorflow" in runs.lower()  # the build refuses TensorFlow in the venv
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert cmd.startswith('CMD ["python3", "-m", "services.')


def test_every_entry_point_is_import_checked_in_the_image():
    check = next(line for line in _instructions() if line.startswith('RUN python3 -c "import services.'))
    for module in ENTRY_POINTS:
        wanted = f"{module}.__main__" if module in ("services.model_server", "services.router") else module
        assert wanted in check, f"the image's import check misses {wanted}"


def test_dockerfile_env_names_are_settings_fields():
    env = " ".join(line[4:] for line in _instructions() if line.startswith("ENV "))
    names = re.findall(r"([A-Z][A-Z0-9_]*)=", env)
    classes = {helm_tool.SERVICES[m]: helm_tool.settings_class(m) for m in helm_tool.SERVICES}
    checked = 0
    for name in names:
        for prefix, cls in sorted(classes.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix):
                assert name[len(prefix):].lower() in cls.model_fields, f"Dockerfile ENV {name}: no such setting"
                checked += 1
                break
    assert checked >= 6


def test_dockerignore_keeps_state_and_caches_out():
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".git", ".venv", ".venv*", ".run", "reports", ".pytest_cache", "**/__pycache__"):
        assert entry in ignored, f".dockerignore misses {entry}"
    assert not any(e.startswith("models") for e in ignored), "the model repository must reach the build"


def runtime_closure() -> dict[str, str]:
    """name -> installed version of the runtime dependencies and everything they require."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    found: dict[str, str] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in found:
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def test_runtime_dependencies_are_pinned_and_tensorflow_free():
    lock = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    closure = runtime_closure()
    assert "onnxruntime" in closure and "numpy" in closure
    unpinned = {n: v for n, v in closure.items() if lock.get(n) != v}
    assert not unpinned, f"runtime dependencies not pinned (or pinned to another version) in the lock: {unpinned}"
    assert not {n for n in closure if n.startswith("tensorflow")}


def test_entry_points_import_with_runtime_dependencies_only():
    closure = set(runtime_closure())
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if not any(re.sub(r"[-_.]+", "-", d).lower() in closure for d in dists):
            blocked.add(module)
    blocked -= {"services", "models", "loadtests", "tests", "_distutils_hack", "pkg_resources", "setuptools"}
    code = (
        "import sys, importlib.abc\n"
        f"BLOCKED = {sorted(blocked)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not a runtime dependency (not in the image)')\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {m if m not in ('services.model_server', 'services.router') else m + '.__main__'}\n"
                  for m in ENTRY_POINTS)
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sklearn" in blocked and "pytest" in blocked  # the check is real: dev and training packages are blocked
