"""Open Inference Protocol (KServe V2) gRPC API: wire-compatible protos, stubs, tensor codec.

    open_inference_pb2 / _pb2_grpc   `inference.GRPCInferenceService` and its messages, generated
                                     from protos/serving_patterns/oip/open_inference.proto
    pool                             the descriptor pool those messages live in (not the default)
    tensors                          InferInputTensor / raw contents <-> numpy

See README.md for what is served and why the messages have a pool of their own.
"""
