"""A custom MLServer runtime serving an ONNX model with ONNX Runtime (MLServer ships none for ONNX).

Runs inside MLServer's own venv (`.venv-mlserver`, pinned by `mlserver-requirements.txt`), so it
imports nothing from this project. A model's `model-settings.json` points at it:

    {"name": "wine", "implementation": "mlserver_onnx_runtime.OnnxRuntime",
     "parameters": {"uri": "/abs/path/model.onnx", "version": "2"},
     "max_batch_size": 64, "max_batch_time": 0.001}        # adaptive batching (omit to turn it off)

This is how MLServer's docs tell users to serve a framework it has no runtime for: subclass
`MLModel`, load in `load()`, decode with the codecs in `predict()`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        results = self._session.run(None, {self._input_name: np.asarray(x, dtype=np.float32)})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )
