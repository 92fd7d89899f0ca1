"""The project's own protobuf messages (those tensorflow-serving-api lacks)."""

from __future__ import annotations

import sys

from serving import protogen

if protogen.is_stale():
    protogen.generate()
if str(protogen.OUT_DIR) not in sys.path:
    sys.path.insert(0, str(protogen.OUT_DIR))

# The Open Inference Protocol's published grpc_service.proto (package `inference`),
# compiled under its own file name so that V2 clients' identical copies share it.
import grpc_service_pb2 as v2_pb2
import grpc_service_pb2_grpc as v2_pb2_grpc
from modelserver.config import (
    batching_parameters_pb2,
    device_config_pb2,
    monitoring_config_pb2,
    ssl_config_pb2,
)

BatchingParameters = batching_parameters_pb2.BatchingParameters
DeviceConfigProto = device_config_pb2.DeviceConfig
MonitoringConfig = monitoring_config_pb2.MonitoringConfig
SSLConfig = ssl_config_pb2.SSLConfig

__all__ = [
    "BatchingParameters",
    "DeviceConfigProto",
    "MonitoringConfig",
    "SSLConfig",
    "v2_pb2",
    "v2_pb2_grpc",
]
