"""Batches on Ray workers against a real local cluster: the same rows as the plain run, error rows,
workers that die (retried once, then error rows), a driver killed mid-run and resumed, and one
run on the real default model.

The workers are separate processes, so the model is `random` (seeded random logits over the
default model's vocabulary: deterministic, and cheap to load), not the in-process fake.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmql_lite import api, cli
from lmql_lite.errors import WorkerError

ray = pytest.importorskip("ray")

# Row 5 and row 40 raise in the query's own Python: error rows, positioned at the query's line.
QUERY = '''argmax
    "Row {i}: [S]" where len(TOKENS(S)) < 5
    if i in (5, 40):
        raise ValueError(f"row {i} is bad")
    return S
'''
# A row with crash="always" ends its worker's process every time, crash="once" only the first time
# (it leaves a marker file); time.sleep(pause) keeps a run going long enough to kill it.
CRASHING = '''argmax
    import os, time
    time.sleep(pause)
    if crash == "always" or (crash == "once" and not os.path.exists(marker)):
        if crash == "once":
            open(marker, "w").close()
        os._exit(3)
    "Row {i}: [S]" where len(TOKENS(S)) < 4
    return S
'''


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(out):
    return [json.loads(line) for line in out.read_text().splitlines()]


def by_index(out):
    docs = lines(out)
    indices = [d["index"] for d in docs]
    assert len(indices) == len(set(indices)), f"a row written twice: {sorted(indices)}"
    return {d["index"]: d for d in docs}


def run(query, rows, out, *flags):
    return cli.main(["run", str(query), "--inputs", str(rows), "--output", str(out), "--model", "random",
                     "--batch-size", "8", *flags])


def test_64_rows_on_two_workers_are_the_plain_runs_rows(cluster, tmp_path, capfd):
    query = tmp_path / "q.lmq"
    query.write_text(QUERY)
    rows = write_rows(tmp_path / "rows.jsonl", [{"i": i} for i in range(64)])
    assert run(query, rows, tmp_path / "plain.jsonl") == cli.ROWS_FAILED
    capfd.readouterr()
    assert run(query, rows, tmp_path / "ray.jsonl", "--ray", "--workers", "2") == cli.ROWS_FAILED
    err = capfd.readouterr().err
    plain, on_ray = by_index(tmp_path / "plain.jsonl"), by_index(tmp_path / "ray.jsonl")
    assert sorted(on_ray) == list(range(64))
    assert on_ray == plain  # results, and error rows with the query's file, line and column
    bad = on_ray[5]["error"]
    assert bad["type"] == "QueryRuntimeError" and "row 5 is bad" in bad["message"]
    assert bad["query"] == {"file": str(query), "line": 4, "column": 9}
    assert bad["inputs"] == {"file": str(rows), "line": 6}
    assert "64 rows: 62 ok, 2 failed" in err
    ray_lines = [line for line in err.splitlines() if line.startswith("ray:")]
    assert ray_lines == ["ray: the cluster this process is connected to, 2 workers x 1 thread"]


def crashing_rows(tmp_path, n, crashes, pause=0.0):
    marker = str(tmp_path / "crashed-once")
    return [{"i": i, "crash": crashes.get(i, "no"), "marker": marker, "pause": pause} for i in range(n)]


def test_a_dead_workers_rows_run_once_more_then_are_error_rows(cluster, tmp_path):
    rows = crashing_rows(tmp_path, 20, {3: "once", 12: "always"})
    plain = dict(api.run_batch(CRASHING, [dict(r, crash="no") for r in rows], model="random"))
    got = list(api.run_batch(CRASHING, rows, model="random", ray=True, workers=2, return_errors=True))
    indices = [i for i, _ in got]
    assert sorted(indices) == list(range(20))  # every row once: nothing lost, nothing twice
    outcomes = dict(got)
    assert isinstance(outcomes[12], WorkerError) and "died again" in str(outcomes[12])
    assert os.path.exists(rows[3]["marker"])  # row 3 did end a worker, and its retry succeeded
    for i in set(range(20)) - {12}:
        assert not isinstance(outcomes[i], Exception), (i, str(outcomes[i]))
        assert outcomes[i].variables == plain[i].variables, i
    with pytest.raises(WorkerError):  # without return_errors the run ends at that row, as a failing row ends it
        list(api.run_batch(CRASHING, rows[12:13], model="random", ray=True, workers=1))


def stop_driver_after(argv, out, lines, sig):
    """Run the command in a process of its own; once `out` holds `lines` rows, send it `sig`. Its exit code."""
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= lines:
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode()
        os.kill(driver.pid, sig)
        return driver.wait(60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_ctrl_c_then_a_kill_then_resume_lose_and_duplicate_nothing(cluster, tmp_path):
    query = tmp_path / "crash.lmq"
    query.write_text(CRASHING)
    rows = write_rows(tmp_path / "rows.jsonl", crashing_rows(tmp_path, 32, {20: "always"}, pause=0.15))
    out = tmp_path / "out.jsonl"
    address = ray.get_runtime_context().gcs_address  # the drivers join this test's cluster
    argv = [sys.executable, "-m", "lmql_lite", "run", str(query), "--inputs", str(rows), "--output", str(out),
            "--model", "random", "--batch-size", "2", "--ray", address, "--workers", "2"]
    assert stop_driver_after(argv, out, 4, signal.SIGINT) == cli.INTERRUPTED  # Ctrl-C: finished rows written
    first = by_index(out)  # no row twice, and each line whole
    assert 4 <= len(first) < 32
    assert stop_driver_after(argv + ["--resume"], out, len(first) + 4, signal.SIGKILL) == -signal.SIGKILL
    second = by_index(out)
    assert len(first) + 4 <= len(second) < 32 and {i: second[i] for i in first} == first
    assert run(query, rows, out, "--batch-size", "2", "--ray", "--workers", "2", "--resume") == cli.ROWS_FAILED
    after = by_index(out)
    assert sorted(after) == list(range(32))
    assert {i: after[i] for i in second} == second  # what was written before stays as it was
    assert after[20]["error"]["type"] == "WorkerError"
    plain = tmp_path / "plain.jsonl"
    no_crash = write_rows(tmp_path / "plain-rows.jsonl", [dict(r, pause=0.0) for r in crashing_rows(tmp_path, 32, {})])
    assert run(query, no_crash, plain, "--batch-size", "2") == 0
    reference = by_index(plain)
    for i in set(range(32)) - {20}:
        assert after[i]["result"] == reference[i]["result"], i


def test_a_worker_uses_the_threads_it_was_given(cluster):
    from lmql_lite.ray_batch import Worker
    worker = ray.remote(num_cpus=1)(Worker).remote('"Hi [S]" where len(TOKENS(S)) < 3\n', "<q>", "random", None, 1)
    try:
        status, outcomes = ray.get(worker.run.remote([{}], None, True))
        assert status == "ok" and isinstance(outcomes[0].variables["S"], str)
        pid, threads = ray.get(worker.threads_in_use.remote())
        assert pid != os.getpid() and threads == 1
    finally:
        ray.kill(worker)


@pytest.mark.model
def test_one_worker_on_the_default_model(cluster, tmp_path):
    source = 'argmax\n    "Q: What is {a} plus {b}?\\nA: [N]" where INT(N) and len(TOKENS(N)) < 4\n    return N\n'
    rows = [{"a": 2, "b": 3}, {"a": 10, "b": 1}, {"a": 4, "b": 4}]
    plain = dict(api.run_batch(source, rows, batch_size=2))
    on_ray = dict(api.run_batch(source, rows, batch_size=2, ray=True, workers=1))
    assert sorted(on_ray) == [0, 1, 2]
    for i in range(3):
        assert isinstance(on_ray[i].value, int)
        assert on_ray[i].variables == plain[i].variables
