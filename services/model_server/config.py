"""Per-model serving config: version policy, labels and batching, from `<repo>/<model>/config.yaml`.

The file is optional; every key in it is optional and falls back to the server-wide setting:

    # models/repository/breast-cancer/config.yaml
    version_policy: {latest: 2}        # or: all   or: {specific: [1, 2]}
    labels: {stable: 1, canary: 2}     # version labels, usable wherever a version is
    batching:                          # dynamic batching of this model's versions
      enabled: true
      max_rows: 64                     # rows per ONNX Runtime call
      max_delay_ms: 0                  # longest wait for a batch to fill (0: no timer)
      max_queue: 512                   # waiting requests per version before shedding

It lives beside the versions so a release is one directory copy plus, optionally, one label
edit; the server re-reads it on every repository poll (when its mtime changes). A file that
does not parse is logged and ignored: the model keeps its previous config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"


class ConfigError(ValueError):
    """The config file or a setting is malformed; the message names the key."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are loaded, like TF Serving's `model_version_policy`.

    `latest` keeps the N highest version numbers, `all` every version, `specific` the listed ones.
    """

    kind: str = "latest"
    latest: int = 2
    specific: tuple[int, ...] = ()

    def select(self, versions: list[int]) -> set[int]:
        ordered = sorted(versions)
        if self.kind == "all":
            return set(ordered)
        if self.kind == "specific":
            return set(self.specific) & set(ordered)
        return set(ordered[-self.latest :])

    def describe(self) -> str:
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.specific))
        return "all" if self.kind == "all" else f"latest:{self.latest}"

    @classmethod
    def parse(cls, raw: Any) -> VersionPolicy:
        """From `latest:2` / `all` / `specific:1,2` (env) or `{latest: 2}` / `{specific: [1, 2]}` (YAML)."""
        if isinstance(raw, VersionPolicy):
            return raw
        if isinstance(raw, str):
            kind, _, arg = raw.strip().partition(":")
            kind = kind.strip().lower()
            if kind == "all" and not arg:
                return cls("all")
            if kind == "latest":
                return cls._latest(arg or "1")
            if kind == "specific":
                return cls._specific([a for a in arg.split(",") if a.strip()])
        elif isinstance(raw, dict) and len(raw) == 1:
            ((kind, arg),) = raw.items()
            if kind == "all":
                return cls("all")
            if kind == "latest":
                return cls._latest(arg)
            if kind == "specific":
                return cls._specific(arg if isinstance(arg, list) else [arg])
        raise ConfigError(
            f"version_policy {raw!r} is not one of `latest:N`, `all`, `specific:V1,V2` "
            "(YAML: {latest: N}, all, {specific: [V1, V2]})"
        )

    @classmethod
    def _latest(cls, arg: Any) -> VersionPolicy:
        try:
            n = int(arg)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ConfigError(f"version_policy latest needs a whole number >= 1, got {arg!r}")
        return cls("latest", latest=n)

    @classmethod
    def _specific(cls, args: list[Any]) -> VersionPolicy:
        try:
            versions = tuple(sorted({int(a) for a in args}))
        except (TypeError, ValueError):
            versions = ()
        if not versions:
            raise ConfigError(f"version_policy specific needs a list of version numbers, got {args!r}")
        return cls("specific", specific=versions)


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = False
    max_rows: int = 64
    max_delay_s: float = 0.0
    max_queue: int = 512
    in_thread: bool = False


@dataclass(frozen=True)
class ModelConfig:
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)


def parse_model_config(raw: Any, defaults: ModelConfig, source: str) -> ModelConfig:
    """A parsed YAML document on top of the server-wide defaults."""
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"version_policy", "labels", "batching"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: version_policy, labels, batching")
    policy = defaults.policy
    if "version_policy" in raw:
        try:
            policy = VersionPolicy.parse(raw["version_policy"])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    labels = dict(defaults.labels)
    if "labels" in raw:
        labels = _labels(raw["labels"] or {}, source)
    batching = defaults.batching
    if "batching" in raw:
        batching = _batching(raw["batching"] or {}, defaults.batching, source)
    return ModelConfig(policy, labels, batching)


def _labels(raw: Any, source: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: labels must map a label to a version number, got {type(raw).__name__}")
    labels = {}
    for label, version in raw.items():
        if not isinstance(label, str) or not label or label.isdigit():
            raise ConfigError(f"{source}: label {label!r} must be a non-numeric string")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"{source}: label {label!r} must point to a version number, got {version!r}")
        labels[label] = version
    return labels


def _batching(raw: Any, base: BatchingConfig, source: str) -> BatchingConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: batching must be a mapping, got {type(raw).__name__}")
    known = {"enabled", "max_rows", "max_delay_ms", "max_queue", "in_thread"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{source}: unknown batching key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        cfg = BatchingConfig(
            enabled=bool(raw.get("enabled", base.enabled)),
            max_rows=int(raw.get("max_rows", base.max_rows)),
            max_delay_s=float(raw.get("max_delay_ms", base.max_delay_s * 1e3)) / 1e3,
            max_queue=int(raw.get("max_queue", base.max_queue)),
            in_thread=bool(raw.get("in_thread", base.in_thread)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: batching: {exc}") from exc
    if cfg.max_rows < 1 or cfg.max_queue < 1 or cfg.max_delay_s < 0:
        raise ConfigError(f"{source}: batching needs max_rows >= 1, max_queue >= 1 and max_delay_ms >= 0")
    return cfg


def read_model_config(path: Path, defaults: ModelConfig) -> ModelConfig:
    """Reads `path` (missing file: the defaults). Raises ConfigError on a bad file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return defaults
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_model_config(raw, defaults, str(path))
