#!/usr/bin/env python3
"""Measures each function's init time: from exec to its first poll of the
Lambda Runtime API (`GET /runtime/invocation/next`), the part of a cold start
the code controls. Serves a stub Runtime API on loopback; makes no AWS call.

Usage: .venv/bin/python scripts/bench-init.py [target/release] [runs]
"""
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

BIN_DIR = sys.argv[1] if len(sys.argv) > 1 else "target/release"
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
polled = threading.Event()


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        polled.set()
        time.sleep(0.2)  # hold the poll; the process is killed meanwhile
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
threading.Thread(target=server.serve_forever, daemon=True).start()
env = dict(
    os.environ,
    AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_port}",
    AWS_LAMBDA_FUNCTION_NAME="bench",
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
    AWS_LAMBDA_FUNCTION_VERSION="1",
    AWS_REGION="us-east-1",
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    TABLE_NAME="bench",
    SECRET_PREFIX="bench/",
    PUBLIC_BASE_URL="https://broker.example.com",
    RUST_LOG="warn",
)
print(f"{'function':<10} {'size (bytes)':>12} {'init p50 ms':>12} {'init p90 ms':>12}")
for fn in ["authorize", "callback", "api", "token", "test-connection", "refresh", "admin"]:
    path = os.path.join(BIN_DIR, fn)
    samples = []
    for _ in range(RUNS):
        polled.clear()
        start = time.perf_counter()
        proc = subprocess.Popen([path], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not polled.wait(10):
            proc.kill()
            sys.exit(f"{fn}: never polled the runtime API")
        samples.append((time.perf_counter() - start) * 1000)
        proc.kill()
        proc.wait()
    samples.sort()
    p90 = samples[int(len(samples) * 0.9) - 1]
    print(f"{fn:<10} {os.path.getsize(path):>12} {statistics.median(samples):>12.1f} {p90:>12.1f}")
server.shutdown()
