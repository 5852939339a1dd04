"""Model backends: the contract (`base`), one module per engine, and loading a model by its name.

A new engine is one module with a `load_model(name)` and one line in ENGINES. A name may say its
engine (`transformers:gpt2`); any other name — a folder, a hub id, None for the embedded
default — goes to DEFAULT_ENGINE. Engines are imported only when a model is loaded.
"""
from __future__ import annotations

import importlib

ENGINES = {
    "transformers": "lmql_lite.models.transformers",  # local folders, hub ids, the embedded default
}
DEFAULT_ENGINE = "transformers"


def load_model(name: str | None = None):
    """The model `name` names, loaded by its engine (see `models.base.LanguageModel`)."""
    engine, rest = DEFAULT_ENGINE, name
    if name is not None:
        prefix, colon, tail = name.partition(":")
        if colon and prefix in ENGINES:
            engine, rest = prefix, tail or None
    return importlib.import_module(ENGINES[engine]).load_model(rest)
