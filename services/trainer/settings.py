"""Settings of the online trainer; environment variables are prefixed TRAINER_."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from services.core.settings import DEFAULT_MODEL_REPOSITORY, REPO_ROOT, settings_config
from services.kafka.topics import LABELS, LABELS_DLQ, MODELS, PREDICTIONS, TRAINER_EVENTS, TRAINER_STATE


class TrainerSettings(BaseSettings):
    """The online trainer (services/trainer): learns from labels joined with the prediction log,
    publishes gated candidates to the models topic."""

    model_config = settings_config("TRAINER_")

    model_name: str = "breast-cancer"
    """Model the trainer learns: its predictions are joined, its candidates published under this record key."""
    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port."""
    labels_topic: str = LABELS
    """Topic of the labels (written by the apps' POST /feedback), keyed by request id."""
    predictions_topic: str = PREDICTIONS
    """The prediction log (the apps' STREAMING_PREDICTION_LOG with STREAMING_PREDICTION_LOG_INPUTS)."""
    dlq_topic: str = LABELS_DLQ
    """Where labels the trainer cannot use go, each with the reason."""
    state_topic: str = TRAINER_STATE
    """Compacted topic of the committed state: the lineage (offsets) and what was published."""
    events_topic: str = TRAINER_EVENTS
    """One record per candidate: version, gate verdict, published or not, data version."""
    models_topic: str = MODELS
    """Where passing candidates are published, signed (the streaming apps follow it)."""
    signing_key_file: Path | None = None
    """File holding the HMAC-SHA256 model signing key. Empty: $MODEL_SIGNING_KEY, then $MODEL_SIGNING_KEY_FILE."""
    publish: bool = True
    """Publish candidates that pass the gates. Off: record them only (a dry run)."""
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Repository holding the reference card (input contract, classes) of model_name."""
    contract_card: Path | None = None
    """model-card.json whose contract the candidates keep. Empty: the newest gate-passing card in model_repository."""
    thresholds_file: Path = REPO_ROOT / "models" / "thresholds.yaml"
    """Quality floors per model (the offline gate's file): a candidate below its floor is not published."""
    output_dir: Path = REPO_ROOT / ".run" / "trainer"
    """Every candidate is written here as <model>/<version>/ (model.onnx, model-card.json, holdout.csv)."""
    start_from: Literal["earliest", "latest"] = "earliest"
    """With no committed state: learn from the topics' beginning, or only from what arrives from now on."""
    every_labels: int = Field(default=200, ge=1)
    """A cycle (learn, export a candidate) starts once this many new label records are on the topic ..."""
    every_seconds: float = Field(default=30.0, gt=0)
    """... or this long after the previous cycle when at least one new label record is there."""
    join_grace_s: float = Field(default=2.0, ge=0)
    """Wait between fixing the labels' end offsets and the predictions': a prediction logged just before its
    label (the log is asynchronous) still joins."""
    join_window: int = Field(default=10_000, ge=1)
    """Predictions kept for the join, per partition (the last offsets); a label whose prediction is older is
    too late and goes to the DLQ (unknown_request)."""
    first_version: int = Field(default=100, ge=1)
    """Version number of the first candidate (above the offline versions); later ones count up."""
    seed: int = 42
    """Seed of the SGD model: with the same rows, the same ONNX bytes."""
    learning_rate: float = Field(default=0.01, gt=0)
    """Constant SGD step size: a larger one follows a change faster and is noisier."""
    alpha: float = Field(default=1e-4, ge=0)
    """L2 regularisation of the SGD model."""
    holdout_every: int = Field(default=5, ge=2)
    """Every n-th joined row is held out (never learned from) for the gates."""
    holdout_rows: int = Field(default=200, ge=10)
    """Rolling holdout: the last this-many held-out rows measure each candidate (and travel with it)."""
    min_holdout_rows: int = Field(default=40, ge=10)
    """No candidate before this many rows are held out."""
    poll_s: float = Field(default=1.0, gt=0)
    """How often the labels' end offsets are checked."""
    read_timeout_s: float = Field(default=60.0, gt=0)
    """Longest wait to read an offset range; a range the broker no longer holds (retention) fails sooner."""
    host: str = "127.0.0.1"
    """Address of the /metrics endpoint."""
    port: int = 0
    """Port of the Prometheus /metrics endpoint; 0: none."""
    log_level: str = "INFO"
    """Python log level of the JSON logs."""
