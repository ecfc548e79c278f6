"""Finding model versions in a repository laid out `<repo>/<model-name>/<version>/`.

A version directory counts once its `model-card.json` exists: the exporter writes the card last,
so a half-copied version is never picked up.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.core.errors import NotFound
from services.core.runtime import CARD_FILE


def list_versions(repo: Path, name: str) -> list[int]:
    model_dir = repo / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / CARD_FILE).is_file()
    )


def list_models(repo: Path) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and list_versions(repo, p.name))


def passed_gate(repo: Path, name: str, version: int) -> bool:
    """False for versions the threshold gate exempted as demo material (see models/thresholds.yaml)."""
    card = json.loads((repo / name / str(version) / CARD_FILE).read_text())
    return bool(card.get("gate", {}).get("passed", True))


def version_dir(repo: Path, name: str, version: int | None = None) -> Path:
    """The directory of `version`; when None, of the newest version that passed its quality gate.

    A release that failed its gate is served only when asked for by number.
    """
    versions = list_versions(repo, name)
    if not versions:
        raise NotFound(f"model {name!r} has no versions in {repo}; run `make models`", field="model_name")
    if version is None:
        passing = [v for v in versions if passed_gate(repo, name, v)]
        if not passing:
            raise NotFound(f"model {name!r} has no version that passed its quality gate", field="model_version")
        version = passing[-1]
    elif version not in versions:
        raise NotFound(f"model {name!r} has no version {version} (have {versions})", field="model_version")
    return repo / name / str(version)
