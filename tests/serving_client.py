"""serve.py in a subprocess, for the serving tests and benchmarks/serving.py: started on a free
port of 127.0.0.1, its output in a log file, stopped with SIGTERM as a service manager stops it.

Standard library only (http.client), so the benchmark's clients and the tests share it.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
HOST = "127.0.0.1"


def free_port():
    """A port of 127.0.0.1 nothing listens on (free when asked; the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python serve.py --model-dir MODEL_DIR --port PORT FLAGS...`, ready once /healthz answers 200.

    command replaces `python serve.py` (the tests run serve.main over a fake model with `python -c`).
    RuntimeError, with the log's end, if it exits or is not ready within startup_seconds.
    """

    def __init__(self, model_dir, log_path, *flags, command=None, startup_seconds=300):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.name = os.path.basename(os.path.abspath(model_dir))
        self.predict_path = f"/v1/models/{self.name}:predict"
        self.predict_url = self.url + self.predict_path
        self.log_path = log_path
        command = command or [sys.executable, os.path.join(ROOT, "serve.py")]
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([*command, "--model-dir", model_dir, "--port", str(self.port), *flags],
                                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited ({self.process.returncode}) before it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve.py was not ready in {startup_seconds} s:\n{self.log()}")
            try:
                if self.request("GET", "/healthz", timeout=5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, parsed JSON answer) of one request on a new connection."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def health(self):
        """/healthz's counters (model_calls, texts_scored, texts_queued, texts_dropped) and status."""
        return self.request("GET", "/healthz", timeout=10)[1]

    def log(self, tail=5000):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-tail:]

    def stop(self, timeout=60):
        """SIGTERM, then its exit code (killed if it has not exited after timeout seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
