"""The build: metadata is in setup.cfg; this file only compiles the hot path.

The modules below are the pure, sans-IO code every AMI event and every decision of a storm
goes through. mypyc compiles them to C extensions (the tracker takes ~25 % less CPU per
event; see README, Performance). Where compiling is impossible (no C compiler or Python
headers, or MCDAEMON_PURE=1), the same modules install as plain Python and behave the same,
only slower: the build warns and goes on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mcdaemon.build_info import HOT_PATH  # plain Python, no dependencies

COMPILED = [f"mcdaemon/{name}.py" for name in HOT_PATH]


def warn_plain(reason: str, remedy: str = "install a C compiler and the Python headers (Debian:"
               " apt-get install gcc python3-dev) and install mcdaemon again") -> None:
    sys.stderr.write(
        f"WARNING: mcdaemon's hot path is not compiled ({reason}): it installs as plain"
        f" Python, which works the same, slower under a storm of calls. To compile it,"
        f" {remedy}.\n")


class OptionalBuildExt(build_ext):
    """Compile if possible; otherwise leave the pure Python modules in place."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # CCompilerError, CompileError, LinkError and kin
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        """Remove what was built: a module compiled without the shared library mypyc puts
        beside it (or the other way round) would not import."""
        for extension in self.extensions:
            built = self.get_ext_fullpath(extension.name)
            if os.path.exists(built):
                os.remove(built)
        self.extensions = []
        warn_plain(str(error) or type(error).__name__)


def missing_build_tool() -> str | None:
    """What compiling needs and is not there (checked first: mypyc's C takes ~20 s to make)."""
    compiler = (os.environ.get("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(headers):
        return f"no Python headers ({headers})"
    if importlib.util.find_spec("mypyc") is None:
        return "no mypyc (it comes with mypy)"
    return None


def extension_modules() -> list[Any]:
    """mypyc's extensions of the hot path, or none: plain Python (with a warning why)."""
    if os.environ.get("MCDAEMON_PURE", "") not in ("", "0"):
        return []
    missing = missing_build_tool()
    if missing is not None:
        warn_plain(missing)
        return []
    from mypyc.build import mypycify

    try:  # mypyc type-checks first; a newer mypy may find what this one did not
        return list(mypycify(COMPILED, opt_level="3", group_name="mcdaemon"))
    except SystemExit:
        warn_plain("mypyc's type check failed: see its errors above",
                   "report those errors to mcdaemon's developers")
    except Exception as error:
        warn_plain(f"mypyc failed: {error!r}", "report this error to mcdaemon's developers")
    return []


setup(ext_modules=extension_modules(), cmdclass={"build_ext": OptionalBuildExt})
