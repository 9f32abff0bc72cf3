"""Backends for the xDS tests: one grpcio server per name given, each
answering /xds.test.Echo/Who with its own name (raw bytes, no protobuf).

Prints "<name> <port>" per server once it listens, then serves until its
standard input closes (the test ends or dies).
"""

import sys
from concurrent import futures

import grpc


def echo_handler(name):
    def who(_request, _context):
        return name.encode()

    return grpc.method_handlers_generic_handler(
        "xds.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )


servers = []
for name in sys.argv[1:]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((echo_handler(name),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servers.append(server)
    print(name, port, flush=True)

sys.stdin.read()
for server in servers:
    server.stop(0)
