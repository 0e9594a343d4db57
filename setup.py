"""Generates the gRPC stubs while the package builds, so every install (wheel, sdist, editable) carries them."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        sys.path.insert(0, str(Path(__file__).parent / "services"))
        from recommender.gateway import codegen

        codegen.generate(codegen.STUBS_DIR, codegen.DESCRIPTOR)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
