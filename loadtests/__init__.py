"""`make bench`: the server measured side by side with its in-process floor.

Load comes from real generators (`wrk` for REST, `h2load` for gRPC) so the
client does not fight the server for the GIL; see loadtests/README.md.
"""
