"""gRPC: TF Serving's PredictionService and ModelService."""
