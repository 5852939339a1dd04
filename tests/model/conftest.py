"""Fixtures for tests on the real default model (loaded once); the tiny random model's fixtures are in tests/conftest.py."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (SmolLM2-135M-Instruct); the first run of all builds its cache (about a minute)."""
    from lmql_lite.models import load_model  # through the dispatch: LMQL_LITE_DEVICE and LMQL_LITE_DTYPE apply

    return load_model(None)
