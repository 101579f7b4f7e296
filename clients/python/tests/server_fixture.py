"""The real chatradio-server as a child process, for the client tests.

Paths come from the environment CTest sets (clients/python/CMakeLists.txt):
CHATRADIO_SERVER (the binary), CHATRADIO_SHARED_DIR (../shared) and
CHATRADIO_SOURCE_DIR (the repository). Waits are event-driven (the server's
JSON log lines, health) with generous limits for a loaded 2-core machine."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.request
from typing import Dict, Optional

SOURCE_DIR = os.environ.get("CHATRADIO_SOURCE_DIR",
                            os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
SHARED_DIR = os.environ.get("CHATRADIO_SHARED_DIR", os.path.join(SOURCE_DIR, "..", "shared"))
SERVER = os.environ.get("CHATRADIO_SERVER", os.path.join(SOURCE_DIR, "build", "server", "service", "chatradio-server"))
MODEL = os.path.join(SHARED_DIR, "models", "stories260K")
TEMPLATES = os.path.join(SOURCE_DIR, "tests", "service", "templates_test.json")
WAIT_S = 120.0

sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "common"))
from grpc_testing import ServerProcess, free_port  # noqa: E402,F401 (free_port: for the tests)


def require_assets(case: unittest.TestCase) -> None:
    if not os.path.isdir(MODEL):
        raise unittest.SkipTest("%s is missing (../shared): skipped" % MODEL)
    if not os.access(SERVER, os.X_OK):
        case.fail("chatradio-server not found at %s (set CHATRADIO_SERVER)" % SERVER)


class Server(ServerProcess):
    """chatradio-server on 127.0.0.1; `port` is its gRPC port, `metrics()` scrapes it."""

    def __init__(self, *extra: str, port: int = 0, wait_ready: bool = True):
        self.metrics_port = free_port()
        args = [SERVER, "--model", MODEL, "--templates", TEMPLATES, "--host", "127.0.0.1", "--port", str(port),
                "--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_port), "--threads", "1"]
        super().__init__(args + list(extra))
        self.port = self.wait_event("listening")["port"]
        self.target = "127.0.0.1:%d" % self.port
        if wait_ready:
            self.wait_event("ready")

    def wait_event(self, name: str, timeout: float = WAIT_S) -> Dict:
        return super().wait_event(name, timeout)

    def metrics(self) -> str:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=30) as r:
            return r.read().decode("utf-8")

    def requests(self, rpc: str, code: str = "OK") -> float:
        """chatradio_requests_total{rpc, code} (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("chatradio_requests_total{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.index("}")]))
                if labels.get("rpc") == rpc and labels.get("code") == code:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> Optional[int]:
        """SIGTERM (drain), then the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.reader.join(WAIT_S)
            assert self.proc.stderr is not None
            self.proc.stderr.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Pki:
    """A throwaway CA with a server certificate for localhost/127.0.0.1 and a
    client certificate (EC P-256: fast), made with the openssl command."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="chatradio-pki-")
        d = self.tmp.name
        with open(os.path.join(d, "server.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        with open(os.path.join(d, "client.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        steps = [
            ["openssl", "req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                                                "-subj", "/CN=test CA"],
            ["openssl", "req"] + ec + ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
            ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext"],
            ["openssl", "req"] + ec + ["-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=test client"],
            ["openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", "-extfile", "client.ext"],
        ]
        for cmd in steps:
            subprocess.run(cmd, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def path(self, name: str) -> str:
        return os.path.join(self.tmp.name, name)

    def cleanup(self) -> None:
        self.tmp.cleanup()
