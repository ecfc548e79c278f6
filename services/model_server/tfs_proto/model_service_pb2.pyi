# Post-processed by services.model_server.tfs_proto.generate: module paths rewritten to services.model_server.tfs_proto.
# ruff: noqa
from services.model_server.tfs_proto import get_model_status_pb2 as _get_model_status_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
