"""Calls the greeter example through the registry's xDS: no registry client
library, only grpcio's built-in `xds:///` resolver and the bootstrap file
(GRPC_XDS_BOOTSTRAP). Each call goes to the next live greeter instance."""
import sys
import time

import grpc
import grpc.experimental  # noqa: F401  (loads the xds resolver)

import helloworld_pb2
import helloworld_pb2_grpc

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 6
with grpc.insecure_channel("xds:///greeter") as channel:
    greeter = helloworld_pb2_grpc.GreeterStub(channel)
    for n in range(calls):
        reply = greeter.SayHello(helloworld_pb2.HelloRequest(name=f"xds {n}"), timeout=20, wait_for_ready=True)
        print(f"{reply.message} (from {reply.server})")
        time.sleep(0.2)
