"""Train the catalog's models, export them to ONNX and write the model repository.

    python -m models.train [--repo models/repository] [--seed 42] [--force] [--only NAME]

For every version in `models/catalog.py` it writes `<repo>/<name>/<version>/`:

- `model.onnx`       the skl2onnx export (outputs `label` and `probabilities`, no ZipMap);
- `model-card.json`  the contract and provenance (see `services/core/card.py`);
- `holdout.csv`      the held-out rows the metrics were measured on, as float32 values.

Two gates stop the run with exit status 1:

- parity: ONNX Runtime and scikit-learn must give identical labels and probabilities within
  1e-5 on the holdout set (both see the same float32 inputs);
- threshold: the holdout metric must meet the floor in `models/thresholds.yaml`, unless the
  version is listed there as exempt demo material (the card then says so).

The same seed gives the same bytes: the export is checked for that by `tests/unit/test_models.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
import yaml
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from models.catalog import CATALOG, ModelSpec, VersionSpec

ROOT = Path(__file__).resolve().parent
DEFAULT_REPO = ROOT / "repository"
THRESHOLDS = ROOT / "thresholds.yaml"
PARITY_TOLERANCE = 1e-5
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
CARD_SCHEMA_VERSION = 1


class GateError(RuntimeError):
    """A model failed the parity or the threshold gate; the message names the numbers."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    floor: float
    exempt: dict[int, str]

    def check(self, name: str, version: int, metrics: dict[str, float]) -> str | None:
        """Raises GateError below the floor; returns the exemption reason for demo material."""
        value = metrics[self.metric]
        if value >= self.floor:
            return None
        if version in self.exempt:
            return self.exempt[version]
        raise GateError(
            f"{name} v{version} refused by the threshold gate: "
            f"{self.metric}={value:.4f} is below the floor {self.floor:.4f} (models/thresholds.yaml)"
        )


def load_thresholds(path: Path = THRESHOLDS) -> dict[str, Threshold]:
    raw = yaml.safe_load(path.read_text())
    return {
        name: Threshold(
            metric=entry["metric"],
            floor=float(entry["floor"]),
            exempt={int(e["version"]): str(e["reason"]) for e in entry.get("exempt", [])},
        )
        for name, entry in raw.items()
    }


def holdout_metrics(task: str, y_true: np.ndarray, labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    out = {
        "accuracy": float(accuracy_score(y_true, labels)),
        "f1_macro": float(f1_score(y_true, labels, average="macro")),
        "log_loss": float(log_loss(y_true, proba, labels=list(range(proba.shape[1])))),
    }
    if task == "binary":
        out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
    return {k: round(v, 6) for k, v in out.items()}


def export_onnx(estimator, graph_name: str, n_features: int, n_classes: int) -> bytes:
    onx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, n_classes]))],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    # Keep the bytes a function of the model alone: skl2onnx names the graph with a random
    # uuid and emits opset imports in set order, which varies with hash randomisation.
    onx.doc_string = ""
    onx.graph.name = graph_name
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        onx.opset_import.add(domain=domain, version=version)
    return onx.SerializeToString()


def check_parity(name: str, version: int, estimator, session: ort.InferenceSession, x32: np.ndarray) -> float:
    ort_labels, ort_proba = session.run(["label", "probabilities"], {"input": x32})
    # scikit-learn sees the very float32 values ONNX Runtime sees.
    sk_labels = estimator.predict(x32.astype(np.float64))
    sk_proba = estimator.predict_proba(x32.astype(np.float64))
    if not np.array_equal(ort_labels.astype(np.int64), sk_labels.astype(np.int64)):
        bad = int(np.sum(ort_labels != sk_labels))
        raise GateError(f"{name} v{version} refused by the parity gate: {bad} holdout labels differ")
    worst = float(np.max(np.abs(ort_proba - sk_proba)))
    if worst > PARITY_TOLERANCE:
        raise GateError(
            f"{name} v{version} refused by the parity gate: probabilities differ by {worst:.2e} "
            f"(tolerance {PARITY_TOLERANCE:.0e})"
        )
    return worst


DRIFT_BINS = 10


def _quantile_bins(column: np.ndarray, n_bins: int = DRIFT_BINS) -> dict:
    """Training quantile bins of one feature, for drift (PSI) against live inputs.

    Interior edges at the deciles of the float32 values the model sees, taken as data values
    (inverted CDF, so a discrete feature's repeated quantiles merge and it gets fewer bins; an
    edge at the maximum is dropped); bin i holds (edges[i-1], edges[i]], the outer bins are
    open-ended. Must match `services/supervisor/drift.py` (`quantile_edges`, `bin_counts`); a
    unit test holds them together.
    """
    x = column.astype(np.float32).astype(np.float64)
    cuts = np.quantile(x, np.arange(1, n_bins) / n_bins, method="inverted_cdf")
    edges = [e for e in sorted({float(np.float32(c)) for c in cuts}) if e < float(x.max())]
    counts = np.bincount(np.searchsorted(np.asarray(edges), x, side="left"), minlength=len(edges) + 1)
    return {"edges": edges, "proportions": [round(float(c) / len(x), 6) for c in counts]}


def feature_stats(names: list[str], x: np.ndarray) -> list[dict]:
    return [
        {
            "name": n,
            "min": float(np.float32(x[:, i].min())),
            "max": float(np.float32(x[:, i].max())),
            "mean": round(float(x[:, i].mean()), 6),
            "std": round(float(x[:, i].std()), 6),
            "bins": _quantile_bins(x[:, i]),
        }
        for i, n in enumerate(names)
    ]


def toolchain(exported: onnx.ModelProto) -> dict:
    """The card's `libraries` and `opset`: what built and exported the model (offline or online)."""
    return {
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "opset": {o.domain or "ai.onnx": o.version for o in exported.opset_import},
    }


def holdout_text(names: list[str], x32: np.ndarray, y: np.ndarray) -> str:
    """The holdout CSV: a header of feature names and `label`, float32 values at full precision."""
    header = ",".join([*names, "label"])
    rows = [",".join([*(f"{v:.9g}" for v in row), str(int(label))]) for row, label in zip(x32, y, strict=True)]
    return header + "\n" + "\n".join(rows) + "\n"


def _write_holdout(path: Path, names: list[str], x32: np.ndarray, y: np.ndarray) -> None:
    path.write_text(holdout_text(names, x32, y))


def build_version(
    spec: ModelSpec, vspec: VersionSpec, seed: int, repo: Path, threshold: Threshold
) -> dict:
    data = spec.load()
    names = [str(n) for n in data.feature_names]
    x, y = np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    n_classes = int(len(np.unique(y)))

    estimator = vspec.build(seed)
    # The poor demo versions learn from shuffled labels: a release that should never ship.
    y_fit = np.random.default_rng(seed).permutation(y_train) if vspec.shuffled_labels else y_train
    estimator.fit(x_train.astype(np.float32).astype(np.float64), y_fit)
    onnx_bytes = export_onnx(estimator, f"{spec.name}-v{vspec.version}", len(names), n_classes)
    exported = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(exported)

    x32 = x_test.astype(np.float32)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = check_parity(spec.name, vspec.version, estimator, session, x32)
    labels, proba = session.run(["label", "probabilities"], {"input": x32})
    metrics = holdout_metrics(spec.task, y_test, labels, proba)
    exemption = threshold.check(spec.name, vspec.version, metrics)

    fingerprint = hashlib.sha256(x_train.tobytes() + y_train.tobytes()).hexdigest()
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": spec.name,
        "version": vspec.version,
        "task": spec.task,
        "algorithm": vspec.algorithm,
        "input": {
            "name": "input",
            "dtype": "float32",
            "shape": [None, len(names)],
            "feature_names": names,
        },
        "features": feature_stats(names, x_train),
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [None]},
            {"name": "probabilities", "dtype": "float32", "shape": [None, n_classes]},
        ],
        "classes": [str(c) for c in data.target_names],
        "metrics": metrics,
        "gate": {
            "metric": threshold.metric,
            "floor": threshold.floor,
            "passed": exemption is None,
            "demo_material": exemption is not None,
            **({"reason": exemption} if exemption else {}),
        },
        "parity": {"max_abs_probability_difference": worst, "tolerance": PARITY_TOLERANCE},
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "training": {
            "seed": seed,
            "rows": int(len(y_train)),
            "holdout_rows": int(len(y_test)),
            "data_fingerprint_sha256": fingerprint,
            "dataset": f"sklearn.datasets.{spec.load.__name__}",
        },
        **toolchain(exported),
    }

    out = repo / spec.name / str(vspec.version)
    out.mkdir(parents=True, exist_ok=True)
    _write_holdout(out / "holdout.csv", names, x32, y_test)
    (out / "model.onnx").write_bytes(onnx_bytes)
    # The card goes last: its presence marks a complete artifact.
    (out / "model-card.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


# The online trainer (services/trainer) exports and gates its candidates with these very functions,
# so a version learned online passes the same parity and threshold gates as one trained here.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository to write")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--force", action="store_true", help="rebuild versions that already exist")
    parser.add_argument("--only", help="build only this model name")
    args = parser.parse_args(argv)

    thresholds = load_thresholds()
    failures = 0
    for spec in CATALOG:
        if args.only and spec.name != args.only:
            continue
        for vspec in spec.versions:
            target = args.repo / spec.name / str(vspec.version) / "model-card.json"
            if target.exists() and not args.force:
                print(f"  {spec.name} v{vspec.version}: present, skipped (--force rebuilds)")
                continue
            started = time.perf_counter()
            try:
                card = build_version(spec, vspec, args.seed, args.repo, thresholds[spec.name])
            except GateError as exc:
                print(f"  {spec.name} v{vspec.version}: REFUSED: {exc}", file=sys.stderr)
                failures += 1
                continue
            gate = card["gate"]
            verdict = "passed" if gate["passed"] else f"EXEMPT demo material ({gate['reason']})"
            metric = gate["metric"]
            print(
                f"  {spec.name} v{vspec.version} ({card['algorithm']}): {metric}="
                f"{card['metrics'][metric]:.4f} floor={gate['floor']:.2f} {verdict}; "
                f"parity max|dp|={card['parity']['max_abs_probability_difference']:.1e}; "
                f"{time.perf_counter() - started:.1f}s"
            )
    if failures:
        print(f"{failures} model version(s) refused; see the messages above.", file=sys.stderr)
        return 1
    print(f"model repository ready: {args.repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
