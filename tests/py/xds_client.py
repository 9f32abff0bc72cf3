"""A grpcio client of an xds:/// target (GRPC_XDS_BOOTSTRAP names the
bootstrap file): calls /xds.test.Echo/Who in a loop and prints one line per
call, "ok <backend>" or "err <status code>", until it is killed.
"""

import sys
import time

import grpc

channel = grpc.insecure_channel(sys.argv[1])
who = channel.unary_unary("/xds.test.Echo/Who")
while True:
    try:
        print("ok", who(b"", timeout=2).decode(), flush=True)
        time.sleep(0.005)
    except grpc.RpcError as e:
        print("err", e.code().name, flush=True)
        time.sleep(0.05)
