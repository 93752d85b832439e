"""Which modules of the hot path run compiled: said by `--version`, the start log line and the
benchmarks, since the same code takes about a third more CPU per AMI event as plain Python.

setup.py compiles HOT_PATH with mypyc where it can and installs plain Python where it cannot,
so an installation may be either; both behave the same.
"""

from __future__ import annotations

import importlib

#: the pure, sans-IO modules every event and decision of a storm goes through (setup.py)
HOT_PATH = ("tracker", "transcript", "records", "policy", "templates", "phone", "sms", "pdus")


def compiled_modules() -> list[str]:
    """The HOT_PATH modules imported from a C extension rather than from their .py."""
    return [name for name in HOT_PATH
            if not str(importlib.import_module(f"{__package__}.{name}").__file__).endswith(".py")]


def build_summary() -> str:
    """Compiled, plain Python or, when a build left some out, which modules are compiled."""
    compiled = compiled_modules()
    if len(compiled) == len(HOT_PATH):
        return "hot path compiled with mypyc"
    if not compiled:
        return "hot path in plain Python"
    return f"hot path partly compiled with mypyc: {', '.join(compiled)}"
