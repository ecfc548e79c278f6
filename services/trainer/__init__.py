"""The online trainer: learns from labelled feedback on Kafka and ships each new version as data.

    python -m services.trainer run
    python -m services.trainer replay --card .run/trainer/breast-cancer/105/model-card.json
    python -m services.trainer bench-drift            the concept-drift report (reports/online-learning.md)

See README.md. Modules: join.py (labels x prediction log by request id), learner.py (the
partial_fit model, rolling holdout, export and gates via models/train.py), core.py (cycles and the
lineage, no Kafka), kafka_io.py (offset ranges, state), service.py (the loop, commit, publish,
replay), drift.py (the concept-drift scenario), settings.py, metrics.py.

Not a serving path: it imports scikit-learn and skl2onnx (training dependencies, not in the image).
"""
