"""Validated configuration: the model list and the optional config protos."""
