"""The descriptor pool the Open Inference Protocol messages register in, instead of protobuf's default.

Our messages must carry upstream's full names (`inference.ModelInferRequest`, ...) to be
wire-compatible, and tritonclient and MLServer register those same names in the default pool from
files of their own; the default pool refuses a second definition of a symbol. A pool of our own
lets one process hold both, e.g. a test driving our server with `tritonclient.grpc`.
Generated modules import POOL (see services/protocols/generate.py); nothing else registers here.
"""

from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()
