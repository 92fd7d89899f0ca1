"""Servables: a loaded model version and the way to run its signatures.

Nothing here knows about gRPC or JSON.
"""
