"""Per-variant model quality: predicted-label counts, and accuracy / rewards from outcome feedback.

    dispatch (every answer)      predicted(variant, labels, probabilities)   labels the variant predicted
    shadow mirror (compared)     predicted(shadow, labels, probabilities)    labels a shadow predicted
    POST /feedback (applied)     scored(variant, n_rows, n_correct)          label feedback vs the prediction
                                 rewarded(variant, reward)                   reward / A/B outcome

Counts are cumulative since the router started (names, not config versions: a variant keeps its
numbers across config changes). Each variant's metric children (`router_feedback_*`,
`router_predicted_labels_total`) are resolved once. The number of classes of a variant is learnt
from its answers (the width of the probabilities per row) and bounds the labels feedback may name.
Owned by the router's event loop (not thread-safe).
"""

from __future__ import annotations

from typing import Any

from services.router import metrics


class VariantQuality:
    __slots__ = ("name", "labels", "correct", "rewards", "reward_sum", "reward_squares", "classes", "predicted",
                 "_labels", "_correct", "_rewards", "_reward", "_squares", "_children", "_other")

    def __init__(self, name: str) -> None:
        self.name = name
        self.labels = 0
        self.correct = 0
        self.rewards = 0
        self.reward_sum = 0.0
        self.reward_squares = 0.0
        self.classes: int | None = None
        """Classes of the model, from the width of its probabilities; None until seen."""
        self.predicted: dict[str, int] = {}
        self._labels = metrics.FEEDBACK_LABELS.labels(name)
        self._correct = metrics.FEEDBACK_CORRECT.labels(name)
        self._rewards = metrics.FEEDBACK_REWARDS.labels(name)
        self._reward = metrics.FEEDBACK_REWARD.labels(name)
        self._squares = metrics.FEEDBACK_REWARD_SQUARES.labels(name)
        self._children: dict[Any, tuple[str, Any]] = {}  # predicted value -> (label value, child)
        self._other: tuple[str, Any] | None = None

    def predicted_labels(self, labels: list, probabilities: list | None) -> None:
        children = self._children
        for value in labels:
            found = children.get(value)
            if found is None:
                found = self._child(value)
            label, child = found
            child.inc()
            self.predicted[label] = self.predicted.get(label, 0) + 1
        if probabilities and labels and len(probabilities) % len(labels) == 0:
            self.classes = len(probabilities) // len(labels)

    def _child(self, value: Any) -> tuple[str, Any]:
        if len(self._children) < metrics.MAX_LABEL_VALUES:
            label = str(value)
            found = self._children[value] = (label, metrics.PREDICTED_LABELS.labels(self.name, label))
            return found
        if self._other is None:
            self._other = ("other", metrics.PREDICTED_LABELS.labels(self.name, "other"))
        return self._other

    def scored(self, rows: int, correct: int) -> None:
        self.labels += rows
        self.correct += correct
        self._labels.inc(rows)
        self._correct.inc(correct)

    def rewarded(self, reward: float) -> None:
        self.rewards += 1
        self.reward_sum += reward
        self.reward_squares += reward * reward
        self._rewards.inc()
        self._reward.observe(reward)
        self._squares.observe(reward * reward)

    def summary(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "correct": self.correct,
            "accuracy": self.correct / self.labels if self.labels else None,
            "rewards": self.rewards,
            "reward_sum": self.reward_sum,
            "mean_reward": self.reward_sum / self.rewards if self.rewards else None,
            "predicted_labels": dict(sorted(self.predicted.items())),
            "classes": self.classes,
        }


class Quality:
    """Every variant's `VariantQuality`, by name."""

    def __init__(self) -> None:
        self.variants: dict[str, VariantQuality] = {}

    def of(self, variant: str) -> VariantQuality:
        q = self.variants.get(variant)
        if q is None:
            q = self.variants[variant] = VariantQuality(variant)
        return q

    def summary(self, routed: list[str]) -> dict[str, Any]:
        """Per variant: the routed ones (in config order, even without data), then any other with data."""
        names = list(routed) + sorted(n for n in self.variants if n not in routed)
        return {name: self.of(name).summary() if name in routed else self.variants[name].summary()
                for name in names}
