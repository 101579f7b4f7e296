#!/usr/bin/env python3
"""Generates chatradio_client's protobuf modules from the repository's proto/.

    python3 clients/python/generate_stubs.py [--proto-root DIR]

Writes chatradio_client/_proto/{chatradio/v1/impression_service,grpc/health/v1/health}_pb2.py
(+ .pyi for type checkers). The files keep their canonical proto names, so the
descriptors are exactly the contract in proto/; nesting them under
chatradio_client._proto keeps health's Python package ("grpc.health.v1") from
shadowing grpcio itself. Only message modules are generated: the client calls
the methods through grpc's generic multi-callables with these messages'
(de)serializers, which is all a *_pb2_grpc stub does, and a *_pb2_grpc module
could not be imported from here (it imports its messages by the absolute proto
package, `chatradio.v1`).

Uses grpc_tools' bundled protoc when installed (`pip install grpcio-tools`),
otherwise `protoc` from PATH (Debian: protobuf-compiler). setup.py calls this
at build time; the tests and the Debian route run it in place. Never edit the
generated files and never commit them.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("chatradio/v1/impression_service.proto", "grpc/health/v1/health.proto")


def default_proto_root():
    """$CHATRADIO_PROTO_ROOT, else the repository's proto/ (this file is in clients/python)."""
    return os.environ.get("CHATRADIO_PROTO_ROOT") or os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def _protoc_command():
    if importlib.util.find_spec("grpc_tools") is not None:
        return [sys.executable, "-m", "grpc_tools.protoc"]
    exe = shutil.which("protoc")
    if exe is None:
        raise SystemExit("generate_stubs: neither grpc_tools (pip install grpcio-tools) nor protoc "
                         "(Debian: apt-get install protobuf-compiler) is available")
    return [exe]


def generate(proto_root=None, out_dir=None):
    """Generates the modules; returns the output folder."""
    proto_root = proto_root or default_proto_root()
    out_dir = out_dir or os.path.join(HERE, "chatradio_client", "_proto")
    for rel in PROTOS:
        if not os.path.isfile(os.path.join(proto_root, rel)):
            raise SystemExit("generate_stubs: %s not found under %s (pass --proto-root)" % (rel, proto_root))
    os.makedirs(out_dir, exist_ok=True)
    # Generated into a scratch folder and moved into place file by file
    # (os.replace is atomic), so a test run importing the modules while
    # another regenerates them never reads a half-written file.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".gen-") as tmp:
        cmd = _protoc_command() + ["-I" + proto_root, "--python_out=" + tmp, "--pyi_out=" + tmp]
        subprocess.run(cmd + [os.path.join(proto_root, rel) for rel in PROTOS], check=True)
        for rel in PROTOS:
            # Regular packages (not namespace ones): setuptools ships them and
            # type checkers resolve them.
            d = tmp
            for part in os.path.dirname(rel).split("/"):
                d = os.path.join(d, part)
                open(os.path.join(d, "__init__.py"), "a").close()
        open(os.path.join(tmp, "__init__.py"), "a").close()
        for d, _, files in os.walk(tmp):
            dest = os.path.join(out_dir, os.path.relpath(d, tmp))
            os.makedirs(dest, exist_ok=True)
            for name in files:
                os.replace(os.path.join(d, name), os.path.join(dest, name))
    return out_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proto-root", help="folder holding chatradio/v1/*.proto (default: $CHATRADIO_PROTO_ROOT, "
                                         "else the repository's proto/)")
    ap.add_argument("--out", help="output folder (default: chatradio_client/_proto next to this script)")
    a = ap.parse_args()
    print(generate(a.proto_root, a.out))


if __name__ == "__main__":
    main()
