"""The run cache (docs/cache.md): a second run replays every hole with no forward pass; each key that
decides an answer misses when it changes; damage, concurrency, crashes and the size bound."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import lmql_lite
from lmql_lite import cache, cli, runcache
from lmql_lite.models.fake import FakeModel

QUERY = '''argmax
    "Q: yes or no?[A]" where A in [" yes", " no"]
    "\\nDate: [D]" where REGEX(D, r"[0-9]{4}")
    "\\nFree:[F]" where STOPS_AT(F, ".") and len(TOKENS(F)) < 6
    "\\nCount: [N]" where INT(N) and len(TOKENS(N)) < 3
    return [A, D, F, N]
'''


@pytest.fixture
def fake():
    return FakeModel()


def run(source, model, folder, **options):
    return lmql_lite.run(source, model=model, cache=str(folder), **options)


def same(a, b) -> None:
    assert (a.prompt, a.variables, a.value, a.logprobs) == (b.prompt, b.variables, b.value, b.logprobs)
    assert a.logprob == pytest.approx(b.logprob)


def test_a_second_run_replays_every_hole_with_no_forward_pass(fake, tmp_path):
    plain = lmql_lite.run(QUERY, model=fake)
    first = run(QUERY, fake, tmp_path)
    second = run(QUERY, fake, tmp_path)
    same(first, plain)  # caching changes nothing about the answer
    same(second, first)
    assert first.trace.forward_passes > 0 and first.trace.cached_tokens == 0
    assert second.trace.forward_passes == 0 and second.trace.tokens_fed == 0
    assert second.trace.cached_tokens == first.trace.generated_tokens + first.trace.forced_tokens
    assert [e.reason for e in second.trace.ends] == [e.reason for e in first.trace.ends]
    assert runcache.RunCache(tmp_path).info()["entries"] == 4  # one per hole


def test_the_trace_names_replayed_tokens(fake, tmp_path):
    run(QUERY, fake, tmp_path)
    again = lmql_lite.run(QUERY, model=fake, cache=str(tmp_path), trace=True)
    assert {r.how for r in again.trace.tokens} <= {"cached", "forced"}
    assert "cached" in {r.how for r in again.trace.tokens}


def test_a_distribution_is_scored_once(fake, tmp_path):
    q = '"Topic:[T]" distribution T in [" sports", " science", " no"]\n'
    first, second = run(q, fake, tmp_path), run(q, fake, tmp_path)
    assert second.trace.forward_passes == 0
    assert second.distribution == pytest.approx(first.distribution)
    assert second.variables == first.variables


# Each change must make the hole it touches (A unless said) miss, and the answer be the uncached one.
CHANGES = {
    "another model file": dict(model=FakeModel(seed=1)),
    "another bias (weights)": dict(model=FakeModel(bias={" no": 3.0})),
    "another constraint": dict(query=QUERY.replace('[" yes", " no"]', '[" yes", " no", " pos"]')),
    "another regex": dict(query=QUERY.replace("{4}", "{3}"), hole="D"),
    "another prompt": dict(query=QUERY.replace("Q: yes or no?", "Q: no or yes?")),
    "another option (max_tokens)": dict(options={"max_tokens": 5}),
    "another option (max_len)": dict(options={"max_len": 200}),
    "no healing": dict(options={"healing": False}),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_a_key_that_decides_the_answer_misses_when_it_changes(fake, tmp_path, change):
    run(QUERY, fake, tmp_path)
    given = CHANGES[change]
    model, query, options = given.get("model", fake), given.get("query", QUERY), given.get("options", {})
    cached = run(query, model, tmp_path, trace=True, **options)
    plain = lmql_lite.run(query, model=model, **options)
    same(cached, plain)
    # That hole is decoded again (another hole whose own key is unchanged may still hit).
    assert [r.how for r in cached.trace.tokens if r.variable == given.get("hole", "A")].count("cached") == 0
    assert cached.trace.forward_passes > 0


def test_two_spellings_of_one_constraint_share_an_entry(fake, tmp_path):
    a = '"Say:[X]" where X in [" yes", " no"] and len(TOKENS(X)) < 4\n'
    b = '"Say:[X]" where len(TOKENS(X)) < 4 and X in [" yes", " no"]\n'
    run(a, fake, tmp_path)
    assert run(b, fake, tmp_path).trace.forward_passes == 0


def test_another_query_reaching_the_same_prompt_and_constraint_reuses_the_hole(fake, tmp_path):
    first = '"Q: yes or no?[A]" where A in [" yes", " no"]\n'
    other = ('some = 1\n"Q: yes or no?[A]" where A in [" yes", " no"]\n'
             '"\\nThen:[B]" where B in [" pos", " neg"]\n')
    run(first, fake, tmp_path)
    r = run(other, fake, tmp_path)
    same(r, lmql_lite.run(other, model=fake))
    assert r.trace.cached_tokens > 0 and r.trace.forward_passes > 0  # A replayed, B decoded


SAMPLED = '''sample(temperature=1.5)
    "One:[A]" where len(TOKENS(A)) < 5
    "Two:[B]" where len(TOKENS(B)) < 5
'''


def test_seeded_sampling_replays_and_another_seed_misses(fake, tmp_path):
    first = run(SAMPLED, fake, tmp_path, seed=7)
    second = run(SAMPLED, fake, tmp_path, seed=7)
    same(second, first)
    assert second.trace.forward_passes == 0
    other = run(SAMPLED, fake, tmp_path, seed=8)
    same(other, lmql_lite.run(SAMPLED, model=fake, seed=8))
    assert other.trace.cached_tokens == 0


def test_a_replayed_sampled_hole_leaves_the_generator_where_decoding_it_would(fake, tmp_path):
    # The first hole hits; the second, new, must be drawn from the generator state the first left.
    run(SAMPLED, fake, tmp_path, seed=7)
    changed = SAMPLED.replace('"Two:[B]" where len(TOKENS(B)) < 5', '"Two:[B]" where len(TOKENS(B)) < 4')
    r = run(changed, fake, tmp_path, seed=7)
    assert r.trace.cached_tokens > 0
    same(r, lmql_lite.run(changed, model=fake, seed=7))


@pytest.mark.parametrize("options", [{}, {"n": 2, "seed": 3}, {"decoder": "beam", "n": 2}],
                         ids=["sample without a seed", "sample n=2", "beam"])
def test_what_is_not_cached(fake, tmp_path, options):
    q = SAMPLED if "decoder" not in options else SAMPLED.replace("sample(temperature=1.5)", "argmax")
    run(q, fake, tmp_path, **options)
    assert runcache.RunCache(tmp_path).info()["entries"] == 0


def test_argmax_n_rows_each_replay(fake, tmp_path):
    q = QUERY.replace("argmax", "argmax(n=2)")
    first, second = run(q, fake, tmp_path), run(q, fake, tmp_path)
    assert [r.value for r in second] == [r.value for r in first]
    assert all(r.trace.forward_passes == 0 for r in second)


def test_the_environment_turns_it_on_and_cache_false_off(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LMQL_LITE_CACHE_RUNS", str(tmp_path))
    lmql_lite.run(QUERY, model=fake)
    assert lmql_lite.run(QUERY, model=fake).trace.forward_passes == 0
    assert lmql_lite.run(QUERY, model=fake, cache=False).trace.forward_passes > 0


def test_files_are_private(fake, tmp_path):
    folder = tmp_path / "runs"
    run(QUERY, fake, folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


# ---- damage ------------------------------------------------------------------------------------

def test_a_damaged_file_is_a_miss_with_a_note(fake, tmp_path, capsys):
    (tmp_path / runcache.FILE).write_bytes(b"not a database at all" * 100)
    os.chmod(tmp_path / runcache.FILE, 0o600)
    r = run(QUERY, fake, tmp_path)
    same(r, lmql_lite.run(QUERY, model=fake))
    assert "damaged" in capsys.readouterr().err
    assert cli.main(["cache", "clear", str(tmp_path)]) == 0
    runcache._opened.clear()  # as a new process would
    run(QUERY, fake, tmp_path)
    assert run(QUERY, fake, tmp_path).trace.forward_passes == 0  # cleared: it works again


def test_a_damaged_entry_is_a_miss_with_a_note(fake, tmp_path, capsys):
    first = run(QUERY, fake, tmp_path)
    runcache._opened.clear()
    with sqlite3.connect(tmp_path / runcache.FILE) as db:  # another value under the same checksum
        db.execute("UPDATE entries SET value = replace(value, '[[', '[[1,')")
    r = run(QUERY, fake, tmp_path)
    same(r, first)
    assert r.trace.cached_tokens == 0 and "checksum" in capsys.readouterr().err


def test_an_entry_that_does_not_fit_its_hole_is_decoded_again(fake, tmp_path, capsys):
    store = runcache.RunCache(tmp_path)
    first = run(QUERY, fake, tmp_path)
    keys = [k for (k,) in store._connect().execute("SELECT key FROM entries")]
    bad = {"tokens": [[fake.encode("z")[0], 0.0, "chosen", 1]], "wish": None, "rng": None}
    for k in keys:
        store.put(k, bad)  # well-formed and checksummed, but "z" is no value of any hole
    r = run(QUERY, fake, tmp_path)
    same(r, first)
    assert r.trace.cached_tokens == 0 and "does not fit" in capsys.readouterr().err


# ---- the store -----------------------------------------------------------------------------------

def test_least_recently_used_entries_go_first_under_the_bound(tmp_path):
    value = ["x" * 100]
    size = len("k0") + len(json.dumps(value, separators=(",", ":")))
    store = runcache.RunCache(tmp_path, max_bytes=5 * size + size // 2)  # room for 5 entries
    for i in range(5):
        store.put(f"k{i}", value)
        time.sleep(0.01)
    assert store.get("k0") == value  # used now: no longer the oldest
    for i in range(5, 7):
        store.put(f"k{i}", value)
        time.sleep(0.01)
    info = store.info()
    kept = {k for (k,) in store._connect().execute("SELECT key FROM entries")}
    assert kept == {"k0", "k3", "k4", "k5", "k6"}
    assert (info["entries"], info["bytes"], info["hits"]) == (5, 5 * size, 1)


def test_an_entry_larger_than_the_bound_is_not_kept(tmp_path):
    store = runcache.RunCache(tmp_path, max_bytes=100)
    store.put("small", [1])
    store.put("big", ["x" * 200])
    assert store.get("big") is None and store.get("small") == [1]


def _writer(folder: str, name: str, count: int) -> None:
    store = runcache.RunCache(folder)
    for i in range(count):
        store.put(f"{name}{i}", {"i": i, "pad": "y" * 200})
        other = store.get(f"{'b' if name == 'a' else 'a'}{i // 2}")
        assert other is None or other["i"] == i // 2


def test_two_processes_write_and_read_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), name, 150)) for name in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = runcache.RunCache(tmp_path)
    assert store.info()["entries"] == 300
    assert all(store.get(f"{n}{i}")["i"] == i for n in "ab" for i in range(150))


CRASHING_WRITER = textwrap.dedent('''
    import sys
    from lmql_lite import runcache
    store = runcache.RunCache(sys.argv[1])
    i = 0
    while True:
        store.put(f"k{i}", {"i": i, "pad": "z" * 5000})
        i += 1
        if i == 20:
            print("writing", flush=True)
''')


def test_a_writer_killed_mid_write_leaves_no_damaged_entry(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"writing"
    time.sleep(0.3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with sqlite3.connect(tmp_path / runcache.FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT key, value, checksum FROM entries").fetchall()
        assert db.execute("SELECT entries FROM totals").fetchone() == (len(rows),)
    assert len(rows) >= 20
    assert all(runcache._checksum(k, v) == c for k, v, c in rows)
    store = runcache.RunCache(tmp_path)
    assert all(store.get(k)["i"] == int(k[1:]) for k, _, _ in rows)


# ---- the command line ------------------------------------------------------------------------------

def test_cache_info_and_clear(fake, tmp_path, capsys):
    run(QUERY, fake, tmp_path)
    run(QUERY, fake, tmp_path)
    runcache._opened.clear()
    assert cli.main(["cache", "info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 4 and info["hits"] == 4 and info["bytes"] > 0
    assert info["location"] == str(tmp_path / runcache.FILE)
    assert cli.main(["cache", "info", str(tmp_path)]) == 0
    assert "entries:   4" in capsys.readouterr().out
    assert cli.main(["cache", "clear", str(tmp_path)]) == 0
    assert "removed 4 entries" in capsys.readouterr().out
    assert runcache.RunCache(tmp_path).info()["entries"] == 0


def test_run_cache_and_no_cache_flags(tmp_path, capsys, tiny_model_dir):
    query = tmp_path / "q.lmq"
    query.write_text('argmax\n    "Say:[X]" where X in [" yes", " no"]\n    return X\n')
    folder = tmp_path / "runs"
    argv = ["run", str(query), "--model", str(tiny_model_dir), "--quiet"]
    assert cli.main(argv + ["--cache", str(folder)]) == 0
    assert cli.main(argv + ["--cache", str(folder)]) == 0
    assert cli.main(argv + ["--no-cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and len(set(out)) == 1
    assert runcache.RunCache(folder).info()["hits"] == 1
    assert cli.main(argv + ["--cache", str(folder), "--no-cache"]) != 0
    assert "choose one" in capsys.readouterr().err


def test_another_weights_file_is_another_model_whatever_its_name(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    import safetensors.torch
    from lmql_lite.models import load_model
    other = tmp_path / "tiny-llama"  # the same name, the same tokenizer, one weight changed
    shutil.copytree(tiny_model_dir, other)
    weights = safetensors.torch.load_file(other / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.5
    safetensors.torch.save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path / "cache"))  # the weights' digests are kept there
    monkeypatch.setattr(cache, "_digests", {})  # as in a new process
    a, b = load_model(str(tiny_model_dir)), load_model(str(other))
    assert runcache.tokenizer_fingerprint(a) == runcache.tokenizer_fingerprint(b)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_model(str(tiny_model_dir)).fingerprint()
    q = '"Say:[X]" where len(TOKENS(X)) < 4\n'
    folder = tmp_path / "runs"
    run(q, a, folder)
    assert run(q, a, folder).trace.forward_passes == 0
    assert run(q, b, folder).trace.cached_tokens == 0
    assert len(list((tmp_path / "cache" / "digests").iterdir())) == 4  # two folders' weights and configs
