"""Where a model runs, as users spell it (`device=`, `dtype=`, LMQL's `cuda=`, `device_map=`, `torch_dtype=`, the environment): read torch-free."""
from __future__ import annotations

import pytest

from lmql_lite.errors import ModelError
from lmql_lite.models import placement


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    monkeypatch.delenv("LMQL_LITE_DEVICE", raising=False)
    monkeypatch.delenv("LMQL_LITE_DTYPE", raising=False)


class TorchLike:
    """Prints as torch.device and torch.dtype objects do."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


@pytest.mark.parametrize("options,expected", [
    ({}, ("auto", "auto")),
    ({"device": "cpu"}, ("cpu", "auto")),
    ({"device": "CUDA:1", "dtype": "bf16"}, ("cuda:1", "bfloat16")),
    ({"device": TorchLike("cuda:0"), "torch_dtype": TorchLike("torch.float16")}, ("cuda:0", "float16")),
    ({"cuda": True}, ("cuda", "auto")),
    ({"cuda": False}, ("auto", "auto")),
    ({"device_map": "auto", "dtype": "half"}, ("auto", "float16")),
    ({"device_map": "mps", "torch_dtype": "float32"}, ("mps", "float32")),
    ({"device": "cuda", "cuda": True, "dtype": "float32", "torch_dtype": "fp32"}, ("cuda", "float32")),
])
def test_spellings(options, expected):
    assert placement(options) == expected


@pytest.mark.parametrize("options,message", [
    ({"device": "gpu"}, "device= 'gpu' is not a device: use auto, cpu, cuda, mps or cuda:N"),
    ({"device": "cuda:x"}, "not a device"),
    ({"device": "mps:1"}, "not a device"),
    ({"dtype": "int8"}, "dtype= 'int8' is not a dtype"),
    ({"cuda": "yes"}, "cuda= is True or False"),
    ({"device_map": {"": 0}}, "device_map= places the whole model on one device"),
    ({"device": "cpu", "cuda": True}, "ask for different devices: device= 'cpu', cuda=True 'cuda'"),
    ({"dtype": "float16", "torch_dtype": "bfloat16"}, "disagree"),
])
def test_mistakes_are_model_errors(options, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace("?", r"\?")):
        placement(options)


def test_the_environment_fills_in_what_the_options_leave(monkeypatch):
    monkeypatch.setenv("LMQL_LITE_DEVICE", "cpu")
    monkeypatch.setenv("LMQL_LITE_DTYPE", "bfloat16")
    assert placement({}) == ("cpu", "bfloat16")
    assert placement({"device": "cuda", "dtype": "float32"}) == ("cuda", "float32")  # options first
    monkeypatch.setenv("LMQL_LITE_DEVICE", "tpu")
    with pytest.raises(ModelError, match="LMQL_LITE_DEVICE= 'tpu' is not a device"):
        placement({})
