"""Build step: generate the protobuf modules from ../../proto before packaging.

Everything declarative lives in pyproject.toml; this file only hooks
generate_stubs.generate() into build_py, so `pip install ./clients/python`
(and building a wheel) always ships modules made from the proto in this tree.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_stubs  # noqa: E402


class BuildPyWithStubs(build_py):
    def run(self):
        generate_stubs.generate()
        # Packages were listed before the stubs existed: list them again.
        self.packages = sorted(set(self.packages or []) | set(self._generated_packages()))
        super().run()

    @staticmethod
    def _generated_packages():
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chatradio_client", "_proto")
        for d, _, files in os.walk(root):
            if "__init__.py" in files:
                yield "chatradio_client." + os.path.relpath(d, os.path.dirname(root)).replace(os.sep, ".")


setup(cmdclass={"build_py": BuildPyWithStubs})
