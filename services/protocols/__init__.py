"""Wire formats that more than one service speaks. No service logic lives here.

| package | concern |
|---|---|
| `tfs/` | TF Serving gRPC API (`PredictionService`, `ModelService`): wire-compatible protos, stubs, tensor codecs |
"""
