"""Where a test finds an AMI recording by name.

One copy of each: the recordings the demo plays are package data (`mcdaemon/sim/recordings/`),
the ones only tests use (the 50-call storm, the call-back request …) stay in `tests/fixtures/`.
"""

from __future__ import annotations

from pathlib import Path

import mcdaemon.sim

PACKAGE = Path(mcdaemon.sim.__file__).resolve().parent / "recordings"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: every recording, in the order of their names
ALL_RECORDINGS = sorted([*PACKAGE.glob("*.ami"), *FIXTURES.glob("*.ami")],
                        key=lambda path: path.name)


def recording_path(name: str) -> Path:
    """The recording `name` (without `.ami`): the package's copy, else the tests' own."""
    packaged = PACKAGE / f"{name}.ami"
    return packaged if packaged.exists() else FIXTURES / f"{name}.ami"
