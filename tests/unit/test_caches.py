"""The user's cache under attack and faults: planted pickles never run, damaged or foreign files are noted and rebuilt, builds are private, locked and clean up."""
from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmql_lite import cli, index as index_module, parser
from lmql_lite.errors import ModelError
from lmql_lite.index import TokenIndex
from lmql_lite import cache
from lmql_lite.models import check_name
from lmql_lite.parser import parse

from test_index import VOCAB, _all_walks  # tests/unit is on sys.path (pytest rootdir)

QUERY = 'argmax\n    "Q: {q}\\nA: [ANSWER]" where STOPS_AT(ANSWER, "\\n")\n    return ANSWER\n'
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


class Plant:
    """Unpickling this creates the marker file: proof that a cache file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A fresh cache root; notes are printed again for every test."""
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_noted", set())
    return tmp_path / "cache"


@pytest.fixture
def fresh_lark(monkeypatch):
    """The parser built again (from the cache or the grammar) on next use, as in a new process."""
    monkeypatch.setattr(parser, "_LARK", None)


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Plant(marker)))


def foreign(path: Path) -> None:
    os.chown(path, 12345, 12345)


def group_writable(path: Path) -> None:
    os.chmod(path, 0o664)


def sealed_but_wrong(path: Path) -> None:
    kind = path.read_bytes().split(b" ", 4)[2].decode()
    cache.save(path, kind, b'{"~c": "Query", "f": {"body": "import os", "prompts": {"~t": []}}}')


DAMAGE = [
    pytest.param(truncate, "damaged", id="truncated"),
    pytest.param(flip, "checksum", id="flipped byte"),
    pytest.param(lambda p: flip(p, 0), "damaged", id="flipped header"),
    pytest.param(lambda p: p.write_bytes(b""), "damaged", id="empty"),
    pytest.param(group_writable, "writable by other users", id="group-writable"),
    pytest.param(foreign, "owned by another user",
                 marks=pytest.mark.skipif(not ROOT, reason="chown needs root"), id="other owner"),
]


# ---- parsed queries ---------------------------------------------------------------------------

def query_entry(root: Path) -> Path:
    (entry,) = (root / "queries").glob("*.json")
    return entry


@pytest.mark.parametrize("damage, why", DAMAGE + [pytest.param(sealed_but_wrong, "not the parse", id="other data")])
def test_a_damaged_or_foreign_query_entry_is_noted_and_parsed_again(root, capsys, damage, why):
    parser.parse_cached(QUERY, "q.lmq")
    entry = query_entry(root)
    damage(entry)
    capsys.readouterr()
    assert parser.parse_cached(QUERY, "q.lmq") == parse(QUERY, "q.lmq")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"ignoring the cache file {entry}" in err and why in err and "rebuilding" in err
    assert entry.stat().st_uid == os.geteuid() and stat.S_IMODE(entry.stat().st_mode) == 0o600  # rewritten, ours
    assert parser.parse_cached(QUERY, "q.lmq") == parse(QUERY, "q.lmq")
    assert capsys.readouterr().err == ""  # the rebuilt entry is used quietly


def test_a_planted_query_pickle_never_runs_not_even_on_check(root, tmp_path, capsys):
    path = tmp_path / "q.lmq"
    path.write_text(QUERY)
    assert cli.main(["check", str(path)]) == 0
    marker = tmp_path / "code-ran"
    entry = query_entry(root)
    plant(entry, marker)
    plant(entry.with_suffix(".pickle"), marker)  # where the previous version kept it
    capsys.readouterr()
    assert cli.main(["check", str(path)]) == 0
    assert not marker.exists()
    assert "damaged" in capsys.readouterr().err


def test_a_query_entry_names_only_node_classes(root):
    parser.parse_cached(QUERY, "q.lmq")
    entry = query_entry(root)
    cache.save(entry, "query", b'{"~c": "Popen", "f": {"args": "touch x"}}')
    assert parser.parse_cached(QUERY, "q.lmq") == parse(QUERY, "q.lmq")
    with pytest.raises(ValueError, match="Popen"):
        cache.loads(b'{"~c": "Popen", "f": {"args": "touch x"}}', parser._NODE_CLASSES)


# ---- Lark's tables ----------------------------------------------------------------------------

def lark_tables(root: Path) -> Path:
    (tables,) = root.glob("grammar-*.json")
    return tables


def test_lark_tables_are_kept_as_data_and_parse_the_same(root, fresh_lark, monkeypatch):
    built = parse(QUERY, "q.lmq")
    tables = lark_tables(root)
    assert tables.read_bytes().startswith(b"lmql_lite cache lark ")
    monkeypatch.setattr(parser, "_LARK", None)
    loads = []
    original = parser.lark.Lark._load_from_dict.__func__

    def spy(cls, data, memo, **kwargs):
        loads.append(1)
        return original(cls, data, memo, **kwargs)
    monkeypatch.setattr(parser.lark.Lark, "_load_from_dict", classmethod(spy))
    assert parse(QUERY, "q.lmq") == built and loads == [1]


@pytest.mark.parametrize("damage, why", DAMAGE[:2] + DAMAGE[4:] + [pytest.param(sealed_but_wrong, "not Lark", id="other data")])
def test_damaged_or_foreign_lark_tables_are_noted_and_rebuilt(root, fresh_lark, monkeypatch, capsys, damage, why):
    expected = parse(QUERY, "q.lmq")
    tables = lark_tables(root)
    damage(tables)
    monkeypatch.setattr(parser, "_LARK", None)
    capsys.readouterr()
    assert parse(QUERY, "q.lmq") == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tables) in err and why in err
    assert tables.stat().st_uid == os.geteuid() and stat.S_IMODE(tables.stat().st_mode) == 0o600


def test_a_planted_lark_cache_never_runs(root, fresh_lark, tmp_path, monkeypatch):
    parse(QUERY, "q.lmq")
    marker = tmp_path / "code-ran"
    plant(lark_tables(root), marker)
    import lark
    plant(root / f"grammar-lark-{lark.__version__}.cache", marker)  # Lark's own cache file, as before
    monkeypatch.setattr(parser, "_LARK", None)
    path = tmp_path / "q.lmq"
    path.write_text(QUERY + "\n")  # not in the parsed-query cache: needs the parser
    assert cli.main(["check", str(path)]) == 0
    assert not marker.exists()


# ---- the token trie ---------------------------------------------------------------------------

def trie_file(folder: Path) -> Path:
    (path,) = folder.glob("index-*.npz")
    return path


@pytest.mark.parametrize("damage, why", DAMAGE)
def test_a_damaged_or_foreign_trie_is_noted_and_built_again(root, capsys, damage, why):
    folder = root / "index"
    TokenIndex(VOCAB, cache_dir=folder)
    path = trie_file(folder)
    damage(path)
    capsys.readouterr()
    assert _all_walks(TokenIndex(VOCAB, cache_dir=folder)) == _all_walks(TokenIndex(VOCAB))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and why in err
    assert path.stat().st_uid == os.geteuid()


def test_a_trie_that_still_loads_but_is_wrong_is_built_again(root, monkeypatch):
    # Flipping bytes inside an array keeps the npz loadable: the checksum catches it.
    folder = root / "index"
    TokenIndex(VOCAB, cache_dir=folder)
    path = trie_file(folder)
    data = bytearray(path.read_bytes())
    at = data.rindex(b"\x01\x00\x00\x00\x00\x00\x00\x00")  # an int64 1 in one of the arrays
    data[at] = 7
    path.write_bytes(bytes(data))
    builds = []
    build = index_module._build_trie
    monkeypatch.setattr(index_module, "_build_trie", lambda texts: builds.append(1) or build(texts))
    assert _all_walks(TokenIndex(VOCAB, cache_dir=folder)) == _all_walks(TokenIndex(VOCAB))
    assert len(builds) == 2  # the damaged file's rebuild, and the reference


def test_a_consistent_trie_of_the_wrong_shape_is_refused(root, capsys):
    import numpy as np
    folder = root / "index"
    TokenIndex(VOCAB, cache_dir=folder)
    path = trie_file(folder)
    import io
    data = io.BytesIO()
    np.savez(data, byte=np.zeros(3, np.int64), child_start=np.ones(3, np.int64), child_end=np.ones(3, np.int64),
             token_node=np.zeros(2, np.int64))
    cache.save(path, "trie", data.getvalue())
    assert _all_walks(TokenIndex(VOCAB, cache_dir=folder)) == _all_walks(TokenIndex(VOCAB))
    assert "not a token trie" in capsys.readouterr().err


# ---- permissions ------------------------------------------------------------------------------

def test_cache_files_and_folders_are_private_whatever_the_umask(root):
    old = os.umask(0o002)
    try:
        parser.parse_cached(QUERY, "q.lmq")
        TokenIndex(VOCAB, cache_dir=root / "index")

        def write(out):
            (out / "weights.bin").write_bytes(b"w")  # written with the umask's 0664
        cache.ensure(root / "model", {"v": 1}, write)
    finally:
        os.umask(old)
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_a_cache_folder_made_group_writable_is_made_private(root):
    root.mkdir(mode=0o775)
    os.chmod(root, 0o775)
    assert cache.subfolder("queries") == root / "queries"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_a_cache_folder_of_another_user_is_not_used(root, capsys):
    (root / "queries").mkdir(parents=True)
    os.chown(root / "queries", 12345, 12345)
    assert cache.subfolder("queries") is None
    assert "owned by another user" in capsys.readouterr().err
    assert parser.parse_cached(QUERY, "q.lmq") == parse(QUERY, "q.lmq")  # still works, uncached


# ---- model folders: atomic, locked, cleaned up ------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_a_model_folder_written_by_another_user_is_rebuilt(tmp_path):
    folder = cache.ensure(tmp_path / "m", {"v": 1}, lambda out: (out / "w").write_text("ours"))
    os.chown(folder / cache.MANIFEST, 12345, 12345)
    assert not cache.is_valid(folder, {"v": 1})
    cache.ensure(folder, {"v": 1}, lambda out: (out / "w").write_text("rebuilt"))
    assert (folder / "w").read_text() == "rebuilt" and cache.is_valid(folder, {"v": 1})


def test_stale_temporary_folders_of_a_killed_build_are_removed_by_the_next(tmp_path):
    stale = tmp_path / ".tmp-m-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    old = tmp_path / ".old-m-xyz"
    (old / "x").mkdir(parents=True)
    cache.ensure(tmp_path / "m", {"v": 1}, lambda out: (out / "w").write_text("w"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


BUILD_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lmql_lite import cache

    folder, log, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def write(out):
        with open(log, "a") as f:
            f.write("build\\n")
        (out / "weights.bin").write_bytes(b"w" * 1000)
        print("building", flush=True)
        time.sleep(seconds)
    cache.ensure(folder, {"v": 1}, write)
    print("ready", (folder / "weights.bin").stat().st_size, flush=True)
""")


def start_build(tmp_path: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUILD_CHILD, str(tmp_path / "m"), str(tmp_path / "log"), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_a_signal_during_a_build_leaves_no_temporary_folder(tmp_path, signum):
    child = start_build(tmp_path, 60)
    assert child.stdout.readline() == "building\n"
    assert list(tmp_path.glob(".tmp-m-*"))
    child.send_signal(signum)
    child.wait(30)
    assert child.returncode != 0
    if signum != signal.SIGINT:
        assert child.returncode == -signum  # the process still ends as the signal says
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "log"]


def test_a_killed_build_is_cleaned_up_and_redone_by_the_next_run(tmp_path):
    child = start_build(tmp_path, 60)
    assert child.stdout.readline() == "building\n"
    child.kill()
    child.wait(30)
    assert list(tmp_path.glob(".tmp-m-*"))  # SIGKILL cannot be caught
    again = start_build(tmp_path, 0)
    out, _ = again.communicate(timeout=60)
    assert out.endswith("ready 1000\n") and not list(tmp_path.glob(".tmp-m-*"))


def test_concurrent_first_runs_build_once(tmp_path):
    first = start_build(tmp_path, 3)
    assert first.stdout.readline() == "building\n"
    second = start_build(tmp_path, 3)
    out, err = second.communicate(timeout=120)
    first.communicate(timeout=120)
    assert out == "ready 1000\n" and "waiting for another process" in err  # used the first one's build
    assert (tmp_path / "log").read_text() == "build\n"


# ---- model mistakes, reported before transformers loads where possible --------------------------------------

@pytest.mark.parametrize("content, why", [
    (os.urandom(200), "not a valid GGUF file"),
    (b"", "not a valid GGUF file"),
    (b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 40, "not a valid GGUF file"),  # header, then garbage
])
def test_a_garbage_gguf_is_reported_as_such(tmp_path, content, why):
    from lmql_lite.models import load_model
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=why):
        load_model(str(path))


@pytest.mark.parametrize("name, why", [
    ("./no-such-folder", "no such file or directory"),
    ("missing.gguf", "no such file or directory"),
    (".", "no config.json"),
    (__file__, "is a file"),
])
def test_model_names_that_cannot_work_are_refused_before_loading_transformers(name, why):
    with pytest.raises(ModelError, match=why):
        check_name(name)
    code = ("import sys\nfrom lmql_lite import api\nfrom lmql_lite.errors import ModelError\n"
            f"try:\n    api.model({name!r}).load()\nexcept ModelError as e:\n    print(e)\n"
            "print('transformers' in sys.modules, 'lmql_lite.models.transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert why in out and out.endswith("False False\n")


def test_cli_reports_a_garbage_gguf_model(tmp_path, capsys):
    query = tmp_path / "q.lmq"
    query.write_text('"Say [X]" where len(TOKENS(X)) < 3\n')
    garbage = tmp_path / "weights.gguf"
    garbage.write_bytes(b"\0" * 64)
    code = cli.main(["run", str(query), "--model", str(garbage)])
    err = capsys.readouterr().err
    assert code == ModelError.exit_code and "not a valid GGUF file" in err and "hub" not in err


@pytest.fixture
def tiny_bert(tmp_path):
    from transformers import BertConfig
    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


@pytest.mark.parametrize("kind, why", [("BertForMaskedLM", "BertForMaskedLM, not a causal language model"),
                                       ("BertLMHeadModel", "is_decoder"),
                                       ("BertModel", "BertModel, not a causal language model")])
def test_a_non_causal_model_is_refused(tmp_path, tiny_bert, kind, why):
    import transformers
    from lmql_lite.models.transformers import load_model
    transformers.logging.set_verbosity_error()
    getattr(transformers, kind)(tiny_bert).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ModelError, match=why):
        load_model(str(tmp_path / "bert"))


@pytest.mark.parametrize("interruption", ["timeout", "interrupt"])
def test_an_interrupted_load_never_rebuilds_the_cache(root, monkeypatch, interruption):
    from lmql_lite.errors import QueryTimeoutError
    from lmql_lite.models import transformers as backend
    gguf = backend._default_gguf()
    source = backend.default_identity(gguf)
    cache.build(root / backend.DEFAULT_NAME, source, lambda out: (out / "config.json").write_text("{}"))
    stop = QueryTimeoutError("the query ran longer than --timeout 1 s") if interruption == "timeout" else KeyboardInterrupt()

    def loading(*args, **kwargs):
        raise stop
    monkeypatch.setattr(backend.AutoModelForCausalLM, "from_pretrained", loading)
    monkeypatch.setattr(backend, "_convert_default", lambda out: pytest.fail("rebuilt the cache"))
    with pytest.raises(type(stop)):
        backend.load_model(None)
    assert cache.is_valid(root / backend.DEFAULT_NAME, source)


def test_a_build_waits_quietly_when_no_one_else_builds(tmp_path, capsys):
    started = time.monotonic()
    cache.ensure(tmp_path / "m", {"v": 1}, lambda out: (out / "w").write_text("w"))
    assert time.monotonic() - started < 10 and "waiting" not in capsys.readouterr().err
