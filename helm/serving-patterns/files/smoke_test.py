"""`helm test`: send one holdout row through the pattern's entry point and check the answer.

Runs in the serving-patterns image (python3 -c "<this file>" --mode ... ; only the standard
library, numpy, onnxruntime and, for --mode kafka, kafka-python, all in the image). The expected
answer is computed here with ONNX Runtime on the artifact of the version that answered, from the
model repository baked into the image; labels must be equal and probabilities within 1e-4.
Exit status 0: right answer; 1: wrong answer or no answer within --timeout.

  --mode app     POST <url>/predict {"instances": [row]}              (embedded, model-as-service, model-as-data)
  --mode v2      POST <url>/v2/models/<model>/infer (KServe V2 body)  (router, Gateway API / Istio front Service)
  --mode kafka   a request record on --requests-topic, its result read back from --results-topic (stream-scoring)
"""

import argparse
import csv
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TOLERANCE = 1e-4


def holdout_row(repo, model):
    """The first holdout row of the model's newest version (all versions share the contract)."""
    versions = sorted((int(p.name) for p in (repo / model).iterdir() if p.name.isdigit()), reverse=True)
    if not versions:
        raise SystemExit(f"no versions of {model} in {repo}")
    card = json.loads((repo / model / str(versions[0]) / "model-card.json").read_text())
    with open(repo / model / str(versions[0]) / "holdout.csv", newline="") as f:
        reader = csv.reader(f)
        header, first = next(reader), next(reader)
    features = card["input"]["feature_names"]
    values = dict(zip(header, first, strict=True))
    return card["input"]["name"], [float(values[name]) for name in features]


def expected(repo, model, version, row):
    import numpy as np
    import onnxruntime as ort

    vdir = repo / model / str(version)
    card = json.loads((vdir / "model-card.json").read_text())
    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    labels, proba = session.run(["label", "probabilities"],
                                {card["input"]["name"]: np.asarray([row], dtype=np.float32)})
    return [int(v) for v in labels.ravel()], [[float(p) for p in r] for r in proba]


def post(url, body, timeout):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", "x-user-id": "helm-test"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read()), dict(response.headers)


def ask_http(args, input_name, row):
    if args.mode == "app":
        payload, headers = post(f"{args.url}/predict", {"instances": [row]}, 10)
        return payload["model_name"], payload["model_version"], payload["labels"], payload["probabilities"], headers
    body = {"inputs": [{"name": input_name, "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    payload, headers = post(f"{args.url}/v2/models/{args.model}/infer", body, 10)
    outputs = {o["name"]: o for o in payload["outputs"]}
    label, proba = outputs["label"], outputs["probabilities"]
    width = proba["shape"][-1]
    rows = [proba["data"][i:i + width] for i in range(0, len(proba["data"]), width)]
    return payload["model_name"], int(payload["model_version"]), label["data"], rows, headers


def ask_kafka(args, row):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    request_id = f"helm-test-{uuid.uuid4().hex[:12]}"
    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                             value_deserializer=json.loads)
    partition = TopicPartition(args.results_topic, 0)
    consumer.assign([partition])
    consumer.seek_to_end(partition)
    consumer.position(partition)
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    # Requests go to partition 0; a worker answers on the same partition number of the results topic.
    producer.send(args.requests_topic, key=request_id.encode(), partition=0,
                  value=json.dumps({"request_id": request_id, "instances": [row]}).encode()).get(timeout=30)
    producer.close()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                result = record.value
                if result.get("request_id") == request_id:
                    consumer.close()
                    return result["model_name"], result["model_version"], result["labels"], result["probabilities"], {}
    consumer.close()
    raise TimeoutError(f"no result for {request_id} on {args.results_topic} within {args.timeout:.0f} s")


def check(repo, got, row):
    model_name, version, labels, proba, headers = got
    want_labels, want_proba = expected(repo, model_name, version, row)
    where = f"{model_name} v{version}" + (f" (variant {headers['x-variant']})" if "x-variant" in headers else "")
    if [int(v) for v in labels] != want_labels:
        return f"wrong label from {where}: got {labels}, ONNX Runtime says {want_labels}"
    diff = max(abs(a - b) for got_row, want_row in zip(proba, want_proba, strict=True)
               for a, b in zip(got_row, want_row, strict=True))
    if diff > TOLERANCE:
        return f"wrong probabilities from {where}: {proba} vs {want_proba} (max difference {diff:.2e})"
    print(f"ok: {where} answered label {labels} probabilities {proba} (max difference {diff:.1e})")
    return None


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["app", "v2", "kafka"], required=True)
    parser.add_argument("--url", help="base URL of the entry point (app, v2)")
    parser.add_argument("--model", required=True, help="model name clients ask for")
    parser.add_argument("--repository", type=Path, default=Path("/app/models/repository"))
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (kafka)")
    parser.add_argument("--requests-topic", default="scoring-requests")
    parser.add_argument("--results-topic", default="scoring-results")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    input_name, row = holdout_row(args.repository, args.model)
    deadline = time.monotonic() + args.timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            got = ask_kafka(args, row) if args.mode == "kafka" else ask_http(args, input_name, row)
            break
        except (OSError, urllib.error.URLError, TimeoutError, KeyError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc = f"HTTP {exc.code}: {exc.read()[:300]!r}"
            if time.monotonic() > deadline:
                print(f"FAIL: no answer from the {args.mode} entry point after {attempt} attempts: {exc}")
                return 1
            print(f"attempt {attempt}: {exc}; retrying", flush=True)
            time.sleep(min(2.0 * attempt, 10.0))
    problem = check(args.repository, got, row)
    if problem:
        print(f"FAIL: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
