"""The Open Inference Protocol ("V2": KServe, Triton) beside TF Serving's API.

Same ports, same models, same request path: the REST routes (`rest.V2Rest`)
mount on the `/v1` HTTP server, the gRPC service (`servicer.add_v2_service`)
joins TF Serving's services on the same grpc.aio server, and both call the
one InferenceService through `service.V2Service`. Wire formats live in
`codec` (pure numpy functions).
"""
