"""The sample service of `discoverd up`, version 1.0: says hello over HTTP.

Standard library only. Usage: python hello.py --port 8080
"""

import argparse
import http.server
import os
import signal
import sys

VERSION = "1.0"


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (
            f"hello from discoverd sample, version {VERSION}, instance {os.environ.get('DISCOVERD_INSTANCE_ID', '?')}\n"
        )
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer((args.bind, args.port), Hello)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"hello {VERSION} listening on http://{args.bind}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
