"""model-server: a drop-in replacement for tensorflow_model_server."""

__version__ = "0.1.0"
