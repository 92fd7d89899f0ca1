"""Thin protocol adapters over serving.inference: gRPC and REST."""
