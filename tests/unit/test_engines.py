"""Engine choice: which engine runs a model name (`engine=`, LMQL_LITE_ENGINE, a name's prefix, `auto`), and the errors when one cannot."""
from __future__ import annotations

import sys

import pytest

import lmql_lite
from lmql_lite import cli, llm, models
from lmql_lite.errors import ModelError
from lmql_lite.models.default import default_gguf
from lmql_lite.models.fake import FakeModel


@pytest.fixture
def engines(monkeypatch):
    """Record the engine, name and threads each load goes to, and load the fake model instead;
    `present` says which engines are installed."""
    calls, present = [], {"transformers": True, "llama.cpp": True}
    monkeypatch.delenv("LMQL_LITE_ENGINE", raising=False)
    monkeypatch.delenv("LMQL_LITE_THREADS", raising=False)
    monkeypatch.setattr(models, "installed", lambda engine: present[engine])
    monkeypatch.setattr(llm, "_loaded", {})  # no handle loaded here outlives the test

    class Engine:
        def __init__(self, engine):
            self.engine = engine

        def load_model(self, name, threads=None, **placement):
            calls.append((self.engine, name, threads))
            return FakeModel()

    for engine, module in models.ENGINES.items():  # what importing the engine module gives
        monkeypatch.setitem(sys.modules, module, Engine(engine))
    return calls, present


def engine(calls, name=None, **options) -> str:
    """The engine that `models.load_model(name, **options)` loads with."""
    models.load_model(name, **options)
    return calls[-1][0]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


def test_auto_runs_gguf_files_on_llamacpp_and_folders_on_transformers(engines, folder):
    calls, present = engines
    gguf = str(default_gguf())
    assert [engine(calls, n) for n in (None, gguf, folder)] == ["llama.cpp", "llama.cpp", "transformers"]
    present["llama.cpp"] = False  # without llama-cpp-python a GGUF file is converted for transformers
    assert [engine(calls, n) for n in (None, gguf)] == ["transformers", "transformers"]
    assert [c[1] for c in calls] == [None, gguf, folder, None, gguf]


def test_the_engine_option_the_environment_and_a_names_prefix_choose(engines, monkeypatch, folder):
    calls, _ = engines
    assert engine(calls, None, engine="transformers") == "transformers"
    monkeypatch.setenv("LMQL_LITE_ENGINE", "transformers")
    assert engine(calls, None) == "transformers"
    assert engine(calls, None, engine="llama.cpp") == "llama.cpp"  # the option before the environment
    assert engine(calls, "llama.cpp:" + str(default_gguf())) == "llama.cpp"  # LMQL's spelling
    assert engine(calls, "transformers:" + folder, engine="auto") == "transformers"
    models.load_model(None, engine="llama.cpp", threads=3)
    assert calls[-1] == ("llama.cpp", None, 3)


@pytest.mark.parametrize("engine, where", [("llamacpp", "did you mean 'llama.cpp'"), ("onnx", "known: auto")])
def test_an_unknown_engine_is_a_model_error_with_the_choices(engines, monkeypatch, engine, where):
    with pytest.raises(ModelError, match=f"unknown engine '{engine}' \\(engine=\\).*{where}"):
        models.load_model(None, engine=engine)
    monkeypatch.setenv("LMQL_LITE_ENGINE", engine)
    with pytest.raises(ModelError, match="LMQL_LITE_ENGINE"):
        models.load_model(None)


def test_an_engine_asked_for_and_not_installed_names_the_install_command(engines):
    _, present = engines
    present["llama.cpp"] = False
    with pytest.raises(ModelError, match=r"(?s)llama.cpp engine is not installed.*pip install 'lmql_lite\[llama\]'"):
        models.load_model(None, engine="llama.cpp")
    with pytest.raises(ModelError, match=r"(?s)not installed.*pip install 'lmql_lite\[llama\]'"):
        models.load_model("llama.cpp:" + str(default_gguf()))


def test_llamacpp_runs_gguf_files_only(engines, folder):
    with pytest.raises(ModelError, match="(?s)llama.cpp engine runs .gguf files.*engine='transformers'"):
        models.load_model(folder, engine="llama.cpp")
    with pytest.raises(ModelError, match="no such file"):
        models.load_model("llama.cpp:/nowhere/m.gguf")


@pytest.mark.parametrize("threads", [0, -2, "two", 1.5, True])
def test_threads_must_be_a_positive_integer(engines, monkeypatch, threads):
    with pytest.raises(ModelError, match="threads must be a positive integer.*threads="):
        models.load_model(None, threads=threads)
    monkeypatch.setenv("LMQL_LITE_THREADS", str(threads))
    with pytest.raises(ModelError, match="LMQL_LITE_THREADS"):
        models.load_model(None)


def test_the_environment_sets_threads(engines, monkeypatch):
    calls, _ = engines
    monkeypatch.setenv("LMQL_LITE_THREADS", "2")
    models.load_model(None)
    assert calls[-1] == ("llama.cpp", None, 2)


def test_run_query_model_and_run_batch_pass_the_engine_on(engines):
    calls, _ = engines
    source = '"Say [X]" where X in ["a", "b"]\n'
    runs = [lambda: lmql_lite.run(source, engine="transformers"),
            lambda: lmql_lite.query(source, is_async=False, engine="transformers")(),
            lambda: list(lmql_lite.run_batch(source, [{}], engine="transformers")),
            lambda: lmql_lite.run(source, model=lmql_lite.model(None, engine="transformers")),
            lambda: lmql_lite.run(source)]
    for run in runs:
        llm._loaded.clear()  # a handle is loaded once per process: load again for each way
        run()
    assert [c[0] for c in calls] == ["transformers"] * 4 + ["llama.cpp"]


def test_the_cli_takes_engine_and_refuses_others():
    args = cli._arguments().parse_args(["run", "q.lmq", "--engine", "llama.cpp"])
    assert args.engine == "llama.cpp"
    with pytest.raises(lmql_lite.QueryArgumentError, match="--engine: invalid choice: 'gpu'"):
        cli._arguments().parse_args(["run", "q.lmq", "--engine", "gpu"])
