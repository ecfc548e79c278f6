"""The concept-drift scenario: a static model against the online trainer, accuracy over time.

    python -m services.trainer bench-drift [--out reports] [--requests 6000]     (make bench-online)

A stream of breast-cancer requests (the holdout rows v1 never trained on, drawn at random with a
little jitter) is answered one by one. Half-way the relation between what the model sees and the
truth changes: a new measuring device reports every size feature (radius, perimeter, area: mean,
error and worst) twice as large. The **static** model is v1 from the repository. The **online**
side starts serving v1 too and, as each request's true label arrives (`label_delay` requests
later), feeds the trainer; every `every_labels` labels a cycle runs and a candidate that passes
the gates (parity, accuracy >= the floor of models/thresholds.yaml on the rolling holdout) is
swapped in. Accuracy is prequential: each request is scored by the version serving at that
moment, before its label is known.

What runs: the trainer's own cycle code (services/trainer/core.py: join by request id, the
partial_fit learner, the export and the gates of models/train.py) fed records shaped like the
topics' (prediction events with inputs, label records), in process; ONNX Runtime answers from the
exported bytes as an app would. What does not: Kafka and HTTP (the integration tests cover those
with the real broker); here they would only add minutes, not change a number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import orjson

from models import train
from services.core.card import ModelCard
from services.core.lifecycle import HOLDOUT_FILE
from services.core.runtime import CARD_FILE, MODEL_FILE
from services.core.settings import DEFAULT_MODEL_REPOSITORY
from services.kafka import labels as label_records
from services.trainer.core import Lineage, OnlineTrainer, Options
from services.trainer.learner import LearnerConfig

MODEL = "breast-cancer"
SIZE_WORDS = ("radius", "perimeter", "area")
DRIFT_FACTOR = 2.0


@dataclass
class Scenario:
    requests: int = 6000
    drift_at: int = 3000
    label_delay: int = 50
    every_labels: int = 200
    window: int = 200
    seed: int = 7
    jitter: float = 0.01
    """Gaussian noise, as a fraction of each feature's std, so repeated holdout rows are distinct requests."""


@dataclass
class Result:
    scenario: Scenario
    static_correct: np.ndarray
    online_correct: np.ndarray
    online_version: np.ndarray
    candidates: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def windows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = self.scenario.window
        n = len(self.static_correct) // w
        ends = np.arange(1, n + 1) * w
        s = self.static_correct[: n * w].reshape(n, w).mean(axis=1)
        o = self.online_correct[: n * w].reshape(n, w).mean(axis=1)
        return ends, s, o


def _load_holdout(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    names = lines[0].split(",")[:-1]
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    return names, rows[:, :-1].astype(np.float32), rows[:, -1].astype(np.int64)


def run(scenario: Scenario, repo: Path = DEFAULT_MODEL_REPOSITORY, progress: bool = True) -> Result:
    started = time.perf_counter()
    v1 = repo / MODEL / "1"
    names, hx, hy = _load_holdout(v1 / HOLDOUT_FILE)
    reference = ModelCard.from_file(v1 / CARD_FILE)
    static = ort.InferenceSession(str(v1 / MODEL_FILE), providers=["CPUExecutionProvider"])
    served = static
    rng = np.random.default_rng(scenario.seed)
    pick = rng.integers(0, len(hx), scenario.requests)
    x = hx[pick] + rng.normal(0, 1, (scenario.requests, hx.shape[1])).astype(np.float32) * (
        hx.std(axis=0) * scenario.jitter)
    x = np.maximum(x, 0).astype(np.float32)  # sizes and ratios are never negative
    y = hy[pick]
    size = [i for i, n in enumerate(names) if any(w in n for w in SIZE_WORDS)]
    x[scenario.drift_at :, size] *= DRIFT_FACTOR

    threshold = train.load_thresholds()[MODEL]
    options = Options(LearnerConfig(), window=10_000, first_version=100)
    trainer = OnlineTrainer(reference, threshold, Lineage("labels", "predictions", {0: 0}, {0: 0}, options))
    static_correct = np.zeros(scenario.requests, bool)
    online_correct = np.zeros(scenario.requests, bool)
    online_version = np.zeros(scenario.requests, np.int64)
    version = 1
    predictions: list[SimpleNamespace] = []
    labels: list[SimpleNamespace] = []
    candidates: list[dict] = []
    for i in range(scenario.requests):
        row = x[i : i + 1]
        static_correct[i] = static.run(["label"], {"input": row})[0][0] == y[i]
        online_correct[i] = served.run(["label"], {"input": row})[0][0] == y[i]
        online_version[i] = version
        rid = f"r{i}"
        predictions.append(SimpleNamespace(partition=0, offset=i, key=rid.encode(), value=orjson.dumps(
            {"schema": 1, "request_id": rid, "model_name": MODEL, "rows": 1, "inputs": row},
            option=orjson.OPT_SERIALIZE_NUMPY)))
        j = i - scenario.label_delay  # the label of an earlier request arrives now
        if j >= 0:
            labels.append(SimpleNamespace(partition=0, offset=j, key=f"r{j}".encode(),
                                          value=label_records.encode(f"r{j}", [int(y[j])], "drift")))
        if len(labels) >= scenario.every_labels:
            outcome = trainer.cycle(predictions, labels, {0: j + 1}, {0: i + 1})
            predictions, labels = [], []
            c = outcome.candidate
            if c is not None:
                candidates.append({"at": i + 1, "version": c.version, "passed": c.passed,
                                   "accuracy": c.card["metrics"].get("accuracy"), "reason": c.reason})
                if c.passed:
                    served = ort.InferenceSession(c.onnx_bytes, providers=["CPUExecutionProvider"])
                    version = c.version
                if progress:
                    acc = c.card["metrics"].get("accuracy")
                    print(f"  request {i + 1:5d}: candidate v{c.version} holdout accuracy "
                          f"{'n/a' if acc is None else f'{acc:.3f}'} -> {'published' if c.passed else 'refused'}",
                          flush=True)
    return Result(scenario, static_correct, online_correct, online_version, candidates,
                  time.perf_counter() - started)


def plot(result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ends, s, o = result.windows()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    ax.plot(ends, s, marker="o", ms=3, label="static (v1)", color="#c0392b")
    ax.plot(ends, o, marker="o", ms=3, label="online (newest version that passed the gates)", color="#2471a3")
    ax.axvline(result.scenario.drift_at, color="grey", ls="--", lw=1)
    ax.text(result.scenario.drift_at, 0.32, " drift: size features x2", color="grey", fontsize=8)
    for c in result.candidates:
        if c["passed"]:
            ax.axvline(c["at"], color="#2471a3", alpha=0.12, lw=1)
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("request")
    ax.set_ylabel(f"accuracy per {result.scenario.window} requests")
    ax.set_title("breast-cancer under concept drift: static vs online learning")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(result: Result, png: Path) -> str:
    sc = result.scenario
    ends, s, o = result.windows()
    before = ends <= sc.drift_at
    after = ~before
    recovered = next((int(e - sc.drift_at) for e, acc in zip(ends[after], o[after], strict=True) if acc >= 0.9), None)
    published = [c for c in result.candidates if c["passed"]]
    refused = [c for c in result.candidates if not c["passed"]]
    first_after = next((c for c in published if c["at"] > sc.drift_at), None)
    refused_after = [c for c in refused if c["at"] > sc.drift_at]
    lag = [c for c in result.candidates if sc.drift_at < c["at"] <= sc.drift_at + sc.window * 3]
    lag_holdout = ", ".join(f"{c['accuracy']:.3f}" for c in lag if c["accuracy"] is not None) or "n/a"
    lag_served = float(result.online_correct[sc.drift_at : sc.drift_at + sc.window * 3].mean())
    rows = "\n".join(f"| {int(e):5d} | {a:.3f} | {b:.3f} |" for e, a, b in zip(ends, s, o, strict=True))
    return f"""# Online learning under concept drift

`make bench-online` (`python -m services.trainer bench-drift`) wrote this file and
[`{png.name}`]({png.name}) in {result.seconds:.0f} s on the 2-core machine.

![accuracy over time]({png.name})

**Scenario.** {sc.requests} requests of `breast-cancer`, drawn from the holdout rows that v1
never trained on (with {sc.jitter:.0%} jitter). After request {sc.drift_at} a new measuring device
reports every size feature (radius, perimeter, area: mean, error and worst; 9 of 30) {DRIFT_FACTOR:.0f}x larger:
the relation between the inputs the model sees and the truth changes. Each request's label
arrives {sc.label_delay} requests later; the trainer runs a cycle every {sc.every_labels} labels.
Accuracy is prequential: every request is scored by the version serving at that moment.

**What runs.** The trainer's cycle code (`services/trainer/core.py`: join by request id, the
`partial_fit` learner, the export and the gates of `models/train.py`), fed records shaped like
the `predictions` and `labels` topics, in process; ONNX Runtime answers from each version's
bytes. Kafka and HTTP are left out here (they add time, not accuracy); the integration tests run
the same code against the real broker.

| | static (v1) | online |
|---|---:|---:|
| accuracy before the drift (requests 1-{sc.drift_at}) | {s[before].mean():.3f} | {o[before].mean():.3f} |
| accuracy after the drift (requests {sc.drift_at + 1}-{sc.requests}) | {s[after].mean():.3f} | {o[after].mean():.3f} |
| accuracy over the last {sc.window * 5} requests | {s[-5:].mean():.3f} | {o[-5:].mean():.3f} |
| candidates published / refused by the gates | - | {len(published)} / {len(refused)} |

- **Recovery:** the online side is back at >= 0.90 per window
  {f"{recovered} requests after the drift" if recovered is not None else "never within the run"};
  the first version published after the drift is
  {f"v{first_after['version']} at request {first_after['at']}" if first_after else "none"}.
- **The gates after the drift:** {len(refused_after)} candidate(s) refused. The rolling
  holdout keeps the last {LearnerConfig().holdout_rows} held-out rows (one label in
  {LearnerConfig().holdout_every}: {LearnerConfig().holdout_rows * LearnerConfig().holdout_every} labels), so right
  after the change it is mostly rows from before it: the candidates of the first
  {sc.window * 3} requests after the drift scored {lag_holdout} on it while the served accuracy on
  the new requests was {lag_served:.3f}. The gate compares a candidate with the recent past the
  labels describe; it cannot see a change sooner than the labels arrive, and it cannot tell "worse
  model" from "changed world" (a drop after a drift fails candidates that are already better than
  the version serving). That is what the supervised rollout is for: it compares the candidate with
  the stable version on the same live traffic.
- **Before the drift** the online side serves v1 until its first candidate passes, then versions
  learned from the stream alone, roughly as good as v1.

Accuracy per window of {sc.window} requests:

| request | static | online |
|---:|---:|---:|
{rows}

Candidates (request at which the cycle ran, version, holdout accuracy, verdict):

| at | version | holdout accuracy | verdict |
|---:|---:|---:|---|
""" + "\n".join(f"| {c['at']} | {c['version']} | {c['accuracy'] if c['accuracy'] is not None else 'n/a'} | "
                f"{'published' if c['passed'] else 'refused: ' + c['reason'][:90]} |" for c in result.candidates) + "\n"


def main(out: Path, requests: int = 6000) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(requests=requests, drift_at=requests // 2)
    print(f"concept-drift scenario: {requests} requests, drift at {scenario.drift_at}", flush=True)
    result = run(scenario)
    png = out / "online-learning.png"
    plot(result, png)
    path = out / "online-learning.md"
    path.write_text(report(result, png))
    return path
