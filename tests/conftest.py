"""Refuses to test a compiled module older than its source.

`pip install -e .` compiles the hot path in place (setup.py): Python then imports the
extension, not the .py beside it, and a test run after an edit would test the old code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mcdaemon"
#: MCDAEMON_EXPECT_COMPILED=1 (scripts/dev.sh test, when it could install a compiler): the
#: suite must run on the compiled hot path, not fall back to plain Python unnoticed
EXPECT_COMPILED = os.environ.get("MCDAEMON_EXPECT_COMPILED", "") not in ("", "0")


def stale_extensions(package: Path) -> list[str]:
    """The compiled modules of `package` whose .py changed after they were built."""
    stale = []
    for extension in sorted(package.glob("*.so")):
        source = package / (extension.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(source.name)
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_extensions(PACKAGE)
    if stale:
        raise pytest.UsageError(
            f"mcdaemon/{', '.join(stale)} changed after it was compiled: the tests would run the "
            "old code. Rebuild with `scripts/dev.sh test` (or `.venv/bin/pip install -e "
            "'.[test]'`), or remove mcdaemon/*.so to test plain Python.")
    if EXPECT_COMPILED:
        from mcdaemon.build_info import compiled_modules

        if not compiled_modules():
            raise pytest.UsageError("MCDAEMON_EXPECT_COMPILED is set but the hot path was not "
                                    "compiled: see the warnings of `pip install -e .`")
