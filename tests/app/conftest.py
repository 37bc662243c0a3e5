"""Fixtures of the app tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GADSYNTH_* or HOLOSCAN_* variable of the caller's: a test sees only the ones it sets."""
    for name in list(os.environ):
        if name.upper().startswith(("GADSYNTH_", "HOLOSCAN_")):
            monkeypatch.delenv(name)
