"""Prometheus metrics of the router (exposed at /metrics).

    router_requests_total{variant, policy, status}    counter   answered requests; variant = who answered
                                                                ("" when none did), status = HTTP status
    router_request_seconds{policy}                    histogram request in to response out, router's view
    router_upstream_seconds{variant}                  histogram one upstream attempt (primary path)
    router_upstream_errors_total{variant, kind}       counter   connect | timeout | reset | protocol | http_5xx
    router_failover_total{from_variant, to_variant, reason}     reason: error | ejected
    router_ejections_total{variant}                   counter   outlier ejections
    router_variant_ejected{variant}                   gauge     1 while a variant is ejected
    router_decisions_total{variant, reason}           counter   sticky-hash | weighted-random | override | ...
    router_feedback_total{outcome}                    counter   applied | acknowledged (202) | not_found | gone
                                                                | conflict | invalid_input | bad_token | unauthorized
                                                                | unavailable
    router_pending_feedback                           gauge     decisions awaiting feedback
    router_config_version                             gauge     version of the routing config in force
    router_config_reloads_total{source, outcome}      counter   file | admin; applied | rejected | unchanged
    router_shadow_mirrored_total{variant}             counter   mirrors sent
    router_shadow_dropped_total{variant}              counter   mirrors dropped because the queue was full
    router_shadow_skipped_total{variant}              counter   mirrors not sent because the shadow was ejected
    router_shadow_errors_total{variant, kind}         counter   mirrors that failed (the client never notices)
    router_shadow_compared_rows_total{variant}        counter   rows whose outputs were compared
    router_shadow_agreeing_rows_total{variant}        counter   rows where shadow and primary labels agree
    router_shadow_abs_prob_diff_sum{variant}          counter   sum over rows of mean |p_shadow - p_primary|
    router_shadow_upstream_seconds{variant}           histogram latency of mirrored requests
    router_shadow_latency_diff_seconds{variant}       gauge     mean (shadow - primary) latency so far
    router_shadow_queue_depth                         gauge     mirrors waiting

Model quality, from outcome feedback (`POST /feedback`, every policy) and the answers themselves:

    router_feedback_labels_total{variant}             counter   label feedback for requests this variant answered
                                                                (or, for a shadow, predicted: mirrored and compared)
    router_feedback_correct_total{variant}            counter   of those, rows whose predicted label was the true one
    router_feedback_rewards_total{variant}            counter   rewards (or A/B outcomes) received for requests this
                                                                variant answered (shadows get none: the client never
                                                                saw their answer)
    router_feedback_reward_sum{variant}               summary   sum of those rewards; with
    router_feedback_reward_count{variant}                       (= rewards_total). A summary without quantiles, not a
                                                                gauge, so the name keeps its `_sum` (promtool forbids
                                                                `_sum` on other types). Rewards may be negative (bandits
                                                                without a declared range, canary/shadow): the sum then
                                                                decreases — read differences of raw samples (or PromQL
                                                                `delta()`), never `rate()`/`increase()`
    router_feedback_reward_squares_sum{variant}       summary   sum of squared rewards (never decreases), for the
    router_feedback_reward_squares_count{variant}               variance; `_count` equals rewards_total
    router_predicted_labels_total{variant, label}     counter   labels predicted (one per row) by answers the variant
                                                                gave, and by shadows' mirrored answers; `label` is
                                                                the predicted class index as a string ("0", "1"...),
                                                                at most 32 distinct values per variant, then "other"

The feedback topic (`feedback_log.py`, with ROUTER_KAFKA_BOOTSTRAP_SERVERS set):

    router_feedback_produced_total{result}            counter   feedback events sent: acked (the broker has it) | failed
    router_feedback_events_total{outcome}             counter   events read back and applied | duplicate (request id
                                                                already applied: skipped) | refused (the policy in force
                                                                cannot learn it) | malformed
    router_feedback_consumer_lag_seconds              gauge     age of the last event applied while behind; 0 when the
                                                                consumer is at the end of the topic
    router_feedback_caught_up                         gauge     1 once the topic was read to its end offsets at start
    router_feedback_consumer_errors_total             counter   consumer sessions that failed (then it reconnects)

The labels topic (`labels_out.py`, with ROUTER_LABELS_TOPIC set):

    router_labels_forwarded_total{result}             counter   accepted label feedback offered to the labels topic:
                                                                buffered (sent in the background: kafka_emitter_*
                                                                {emitter="router-labels"}) | dropped (buffer full; the
                                                                feedback call still succeeded) | skipped (a request id
                                                                the labels format refuses)

Accuracy = correct / labels; mean reward = reward_sum / rewards; reward variance =
squares_sum / rewards - mean^2 (all over the same window: differences of two scrapes). Rows, not
requests: a multi-row request's label feedback (`labels`) counts one per row. The same numbers,
cumulative since the router started, are at GET /quality.

Label agreement rate = agreeing_rows / compared_rows; mean absolute probability difference =
abs_prob_diff_sum / compared_rows (both as PromQL `rate()` ratios for a moving window).
Label values are variant names from the config, never client input. The hot path never calls
`.labels()`: children are resolved once per variant (`VariantMetrics`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Summary

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

REQUESTS = Counter("router_requests", "Requests answered by the router.", ["variant", "policy", "status"])
REQUEST_SECONDS = Histogram(
    "router_request_seconds", "Request in to response out, as the router sees it.", ["policy"], buckets=LATENCY_BUCKETS
)
UPSTREAM_SECONDS = Histogram(
    "router_upstream_seconds", "One upstream attempt on the primary path.", ["variant"], buckets=LATENCY_BUCKETS
)
UPSTREAM_ERRORS = Counter("router_upstream_errors", "Failed upstream attempts.", ["variant", "kind"])
FAILOVER = Counter(
    "router_failover", "Requests sent to the fallback variant.", ["from_variant", "to_variant", "reason"]
)
EJECTIONS = Counter("router_ejections", "Outlier ejections.", ["variant"])
EJECTED = Gauge("router_variant_ejected", "1 while a variant is ejected.", ["variant"])
DECISIONS = Counter("router_decisions", "Policy decisions by reason.", ["variant", "reason"])
FEEDBACK = Counter("router_feedback", "Feedback calls by outcome.", ["outcome"])
PENDING = Gauge("router_pending_feedback", "Decisions awaiting feedback.")
CONFIG_VERSION = Gauge("router_config_version", "Version of the routing config in force.")
CONFIG_RELOADS = Counter("router_config_reloads", "Routing config changes tried.", ["source", "outcome"])

SHADOW_MIRRORED = Counter("router_shadow_mirrored", "Mirrored requests sent.", ["variant"])
SHADOW_DROPPED = Counter("router_shadow_dropped", "Mirrors dropped: queue full.", ["variant"])
SHADOW_SKIPPED = Counter("router_shadow_skipped", "Mirrors not sent: shadow ejected.", ["variant"])
SHADOW_ERRORS = Counter("router_shadow_errors", "Mirrored requests that failed.", ["variant", "kind"])
SHADOW_ROWS = Counter("router_shadow_compared_rows", "Rows compared between shadow and primary.", ["variant"])
SHADOW_AGREE = Counter("router_shadow_agreeing_rows", "Compared rows with the same label.", ["variant"])
SHADOW_PROB_DIFF = Counter(
    "router_shadow_abs_prob_diff_sum", "Sum over rows of the mean absolute probability difference.", ["variant"]
)
SHADOW_SECONDS = Histogram(
    "router_shadow_upstream_seconds", "Latency of mirrored requests.", ["variant"], buckets=LATENCY_BUCKETS
)
SHADOW_LATENCY_DIFF = Gauge("router_shadow_latency_diff_seconds", "Mean shadow minus primary latency.", ["variant"])
SHADOW_QUEUE = Gauge("router_shadow_queue_depth", "Mirrors waiting to be sent.")

FEEDBACK_LABELS = Counter("router_feedback_labels", "Label feedback rows per variant that predicted them.", ["variant"])
FEEDBACK_CORRECT = Counter("router_feedback_correct", "Label feedback rows the variant predicted right.", ["variant"])
FEEDBACK_REWARDS = Counter("router_feedback_rewards", "Rewards received per variant that answered.", ["variant"])
FEEDBACK_REWARD = Summary("router_feedback_reward", "Rewards per variant (_sum may decrease: negative rewards).",
                          ["variant"])
FEEDBACK_REWARD_SQUARES = Summary("router_feedback_reward_squares", "Squared rewards per variant.", ["variant"])
PREDICTED_LABELS = Counter("router_predicted_labels", "Labels predicted per variant (shadows included).",
                           ["variant", "label"])
FEEDBACK_PRODUCED = Counter("router_feedback_produced", "Feedback events sent to the feedback topic.", ["result"])
LABELS_FORWARDED = Counter("router_labels_forwarded", "Accepted label feedback offered to the labels topic: "
                           "buffered | dropped (buffer full) | skipped (request id refused).", ["result"])
FEEDBACK_EVENTS = Counter("router_feedback_events", "Feedback events read back from the topic, by outcome.",
                          ["outcome"])
FEEDBACK_LAG = Gauge("router_feedback_consumer_lag_seconds", "Age of the last feedback event applied while behind.")
FEEDBACK_CAUGHT_UP = Gauge("router_feedback_caught_up", "1 once the feedback topic was read to its end at start.")
FEEDBACK_CONSUMER_ERRORS = Counter("router_feedback_consumer_errors", "Failed feedback consumer sessions.")
#: Distinct `label` values of router_predicted_labels_total per variant; more become "other".
MAX_LABEL_VALUES = 32


class VariantMetrics:
    """Per-variant metric children, resolved once (a `.labels()` call costs microseconds)."""

    __slots__ = ("name", "policy", "upstream_seconds", "_requests", "_errors", "_decisions")

    def __init__(self, name: str, policy: str) -> None:
        self.name = name
        self.policy = policy
        self.upstream_seconds = UPSTREAM_SECONDS.labels(name)
        self._requests: dict[int, object] = {}
        self._errors: dict[str, object] = {}
        self._decisions: dict[str, object] = {}

    def request(self, status: int) -> None:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = REQUESTS.labels(self.name, self.policy, str(status))
        child.inc()  # type: ignore[attr-defined]

    def upstream_error(self, kind: str) -> None:
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = UPSTREAM_ERRORS.labels(self.name, kind)
        child.inc()  # type: ignore[attr-defined]

    def decision(self, reason: str) -> None:
        child = self._decisions.get(reason)
        if child is None:
            child = self._decisions[reason] = DECISIONS.labels(self.name, reason)
        child.inc()  # type: ignore[attr-defined]
