"""TensorFlow Serving gRPC API messages and stubs, without TensorFlow.

The modules here are generated from our own wire-compatible ``.proto`` subset
(see ``protos/`` and ``README.md``). Nothing is imported eagerly on purpose:
registering these messages in protobuf's default descriptor pool clashes with
TensorFlow's own registrations of the same message names, so a process only
pays for (and risks) that when it really imports e.g. ``predict_pb2``.
"""
