"""HTTP backends for the Envoy test: one server per name given, answering
every GET with its name.

Prints "<name> <port>" per server once it listens, then serves until its
standard input closes (the test ends or dies).
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(name):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    return Handler


for name in sys.argv[1:]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(name))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(name, server.server_address[1], flush=True)

sys.stdin.read()
