"""`pip install` of the package the way docs/clients.md tells Debian users
(a venv over Debian's python3-grpcio/python3-protobuf, no index), from a copy
outside the repository so the build must generate the stubs itself."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.dirname(HERE)
PROTO = os.path.join(PACKAGE, "..", "..", "proto")


class Install(unittest.TestCase):
    def test_pip_install_builds_stubs(self):
        tmp = tempfile.mkdtemp(prefix="chatradio-install-")
        self.addCleanup(shutil.rmtree, tmp, True)
        src = os.path.join(tmp, "src")
        shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("_proto", "build", "*.egg-info", "__pycache__",
                                                                    "tests"))
        venv = os.path.join(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
        env = dict(os.environ, CHATRADIO_PROTO_ROOT=os.path.abspath(PROTO))
        env.pop("PYTHONPATH", None)  # the installed package, not the source tree
        r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--no-index", "--no-build-isolation", src],
                           capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        check = ("import os, chatradio_client as c; from chatradio_client import pb; "
                 "d = os.path.dirname(c.__file__); "
                 "assert os.path.isfile(os.path.join(d, 'py.typed')); "
                 "assert os.path.isfile(os.path.join(d, '_proto/chatradio/v1/impression_service_pb2.pyi')); "
                 "assert pb.ScoreRequest.DESCRIPTOR.file.name == 'chatradio/v1/impression_service.proto'; "
                 "print(d)")
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", check], capture_output=True, text=True,
                           env=env, cwd=tmp, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith(venv), r.stdout)
        for tool in ("chatradio-client", "chatradio-eval"):
            r = subprocess.run([os.path.join(venv, "bin", tool), "--help"], capture_output=True, text=True,
                               env=env, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("usage: " + tool, r.stdout)


if __name__ == "__main__":
    unittest.main()
