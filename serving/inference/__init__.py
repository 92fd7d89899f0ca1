"""Predict / Classify / Regress / MultiInference on numpy arrays and tf.Examples.

Independent of the wire protocol: the gRPC and REST adapters translate their
payloads to these calls and back.
"""
