"""Build the optional C accelerator, ``echo20/speedups.c``; pyproject.toml says the rest.

Without a working C compiler (or Python headers) the install still succeeds, without the
extension, and ``protocol.py`` runs its pure-Python builders: websockets builds its
``speedups.c`` the same way. The skip is one line among the build's own progress lines,
never a warning or an error, since nothing is lost but speed: pip shows it only under
``pip install -v``. (It is logged at INFO, as setuptools logs "building ... extension":
pip never passes its verbosity to the build, so a DEBUG line would show nowhere.)
"""

from __future__ import annotations

import logging

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

log = logging.getLogger("echo20.setup")

# What a compiler that is missing, broken or without Python.h raises while building.
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


class OptionalBuildExt(build_ext):
    """``build_ext`` that skips an extension it cannot compile instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as exc:  # no compiler at all: found before any extension
            self._skipped("the C extensions", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self._skipped(ext.name, exc)

    def _skipped(self, what: str, exc: Exception) -> None:
        log.info("echo20: not building %s (%s); pure Python is used instead", what, exc)


setup(
    ext_modules=[Extension("echo20.speedups", sources=["echo20/speedups.c"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
