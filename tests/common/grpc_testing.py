"""What every Python test of the real chatradio-server needs, in one place:
the server scripts' common options, stubs generated from proto/, a free
loopback port, and the server as a child process whose JSON log events can be
awaited.

Used by tests/service/client_test.py, tests/deploy/*.py, bench/serving/*.py and
clients/python/tests/server_fixture.py; they import it by path
(sys.path.insert(0, <repo>/tests/common)) because none of them is a package.
Standard library and grpcio's plugin only, so it runs on Debian's /usr/bin/python3.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List


def make_stubs(proto_root: str, out: str):
    """Generates the Python stubs of the service and of grpc.health.v1 into
    `out`, puts `out` first on sys.path and returns the modules
    (pb, pb_grpc, health_pb2, health_pb2_grpc)."""
    plugin = "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin"
    base = ["protoc", "--python_out=" + out, "--grpc_out=" + out, plugin]
    subprocess.run(base + ["-I" + proto_root, os.path.join(proto_root, "chatradio/v1/impression_service.proto")],
                   check=True)
    # health.proto is compiled from its own folder: as grpc/health/v1/... its
    # Python package would be "grpc", shadowing grpcio itself.
    health_dir = os.path.join(proto_root, "grpc/health/v1")
    subprocess.run(base + ["-I" + health_dir, os.path.join(health_dir, "health.proto")], check=True)
    sys.path.insert(0, out)
    from chatradio.v1 import impression_service_pb2 as pb
    from chatradio.v1 import impression_service_pb2_grpc as pb_grpc
    import health_pb2
    import health_pb2_grpc
    return pb, pb_grpc, health_pb2, health_pb2_grpc


def add_server_arguments(ap: argparse.ArgumentParser) -> None:
    """The options CTest passes every server script: the binary, its model and
    templates, and proto/ for the stubs."""
    ap.add_argument("--server", required=True, help="the chatradio-server binary")
    ap.add_argument("--model", required=True, help="the model folder (stories260K)")
    ap.add_argument("--templates", required=True, help="the prompt templates JSON")
    ap.add_argument("--proto-root", required=True, help="the repository's proto/ folder")


def free_port() -> int:
    """A loopback port free at the time of the call (for servers that must be
    told their port up front, e.g. the metrics listener or Prometheus)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """chatradio-server (argv `args`) as a child process; a thread collects its
    stderr lines (`lines`) so tests wait on log events instead of sleeping."""

    def __init__(self, args: List[str]):
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: List[str] = []
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()
        # EOF: wake waiters so a dead server fails at once, not at the timeout.
        with self.cv:
            self.cv.notify_all()

    def events(self, name: str) -> List[Dict]:
        """Every JSON log line whose "event" is `name`, oldest first."""
        out = []
        with self.cv:
            for line in self.lines:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if isinstance(j, dict) and j.get("event") == name:
                    out.append(j)
        return out

    def wait_event(self, name: str, timeout: float) -> Dict:
        """The first `name` event; raises AssertionError (with the server's
        stderr) when none came within `timeout` seconds or the server exited."""
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                found = self.events(name)
                if found:
                    return found[0]
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError("no %r event from chatradio-server (exit %s); stderr:\n%s" %
                                         (name, self.proc.poll(), "\n".join(self.lines)))
                self.cv.wait(min(left, 1.0))
