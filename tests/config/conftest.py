"""`cli.main` points the log at the stream of the moment (pytest's capture, closed after the
test): every test here leaves the logging as it found it, whatever runs next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
