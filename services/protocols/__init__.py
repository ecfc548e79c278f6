"""Wire formats that more than one service speaks. No service logic lives here.

| package | concern |
|---|---|
| `tfs/` | TF Serving gRPC API (`PredictionService`, `ModelService`): wire-compatible protos, stubs, tensor codecs |
| `oip/` | Open Inference Protocol (KServe V2) gRPC API (`inference.GRPCInferenceService`): protos, stubs, codec |
| `generate.py` | regenerates both packages' `*_pb2*.py` from their `.proto` files (`--check` for CI) |
"""
