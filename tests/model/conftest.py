"""Fixtures for tests on the real default model (loaded once); the tiny random model's fixtures are in tests/conftest.py."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (SmolLM2-135M-Instruct); the first run of all builds its cache (about a minute)."""
    from lmql_lite.models.transformers import load_model

    return load_model(None)
