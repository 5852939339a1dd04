"""Fault injection: a batch run killed at random moments (SIGKILL, SIGTERM, SIGINT), then resumed, holds every row exactly once.

Each run is forked from a small server process that has imported lmql_lite once (and never ran
a model, so forking it is safe), so a run starts in milliseconds and the kills land while rows
are decoded and written, not during imports. The model is the small deterministic fake: the
rows must match an uninterrupted run exactly.
"""
import json
import os
import random
import select
import signal
import subprocess
import sys
import time

QUERY = '"Row {i}:[S]" where len(TOKENS(S)) < 8 and STOPS_AT(S, ".")\nreturn S\n'
ROWS = 600
KILLS = 24
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)

# Reads one command line (JSON) per line, forks a run of it on the fake model, prints the run's
# pid, then its exit code.
FORK_SERVER = """
import json, os, signal, sys
from lmql_lite import api, cli
import time
from lmql_lite.models.fake import FakeBatch, FakeModel
api.model = lambda name=None: FakeModel()
step, step_all = FakeBatch.step, FakeBatch.step_all
# Each pass takes 2 ms, as a small real model's would: on a fast idle machine the fake model's
# passes (and drafts that skip them) ended all 600 rows in about a start-up's time, before any kill.
FakeBatch.step = lambda self, *a, **k: time.sleep(0.002) or step(self, *a, **k)
FakeBatch.step_all = lambda self, *a, **k: time.sleep(0.002) or step_all(self, *a, **k)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os._exit(cli.main(json.loads(line)))
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Runs:
    """The fork server: start a run, wait for it a while, kill it."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, bufsize=1)

    def start(self, argv: list[str]) -> int:
        self.server.stdin.write(json.dumps(argv) + "\n")
        return int(self.server.stdout.readline())

    def wait(self, seconds: float | None = None) -> int | None:
        """The run's exit code, or None if it is still running after `seconds`."""
        if seconds is not None and not select.select([self.server.stdout], [], [], seconds)[0]:
            return None
        return int(self.server.stdout.readline())

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(60)


def _rows(path) -> dict[int, list[dict]]:
    by_index: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)  # every line is a whole row
        by_index.setdefault(doc["index"], []).append(doc)
    return by_index


def test_random_kills_lose_and_duplicate_no_row(tmp_path):
    query, inputs = tmp_path / "q.lmq", tmp_path / "rows.jsonl"
    query.write_text(QUERY)
    # Every 37th row misses its input: error rows must survive the kills too.
    inputs.write_text("".join(json.dumps({"j" if i % 37 == 5 else "i": i}) + "\n" for i in range(ROWS)))

    def argv(out):
        return ["run", str(query), "--inputs", str(inputs), "--output", str(out), "--batch-size", "4", "--resume"]

    runs = Runs()
    try:
        runs.start(argv(tmp_path / "warm-up.jsonl"))  # fills the caches (parsed query, grammar tables)
        assert runs.wait() == 8
        reference = tmp_path / "reference.jsonl"
        began = time.monotonic()
        runs.start(argv(reference))
        assert runs.wait() == 8  # the rows missing their input failed, the others did not
        whole = time.monotonic() - began
        # A run with nothing left to do: the start-up every run pays before its first row.
        # The least of two, since a start-up measured too long lets every killed run finish rows.
        startups = []
        for _ in range(2):
            began = time.monotonic()
            runs.start(argv(reference))
            assert runs.wait() == 8
            startups.append(time.monotonic() - began)
        startup = min(startups)
        # Kill at a random moment of the start-up and a row-time slice, so that the kills come
        # before the end (well under half the rows) on a fast idle machine and a loaded one alike.
        window = max(whole - startup, 0.0) / (2 * KILLS)

        out = tmp_path / "out.jsonl"
        rng = random.Random(18)
        kills, by_signal = 0, {s: 0 for s in SIGNALS}
        # A kill that let a run write more than its share of rows halves the waits after it: a
        # start-up measured longer than a working run's (an idle machine) would let runs finish.
        scale, share = 1.0, ROWS / (2 * KILLS)
        for _ in range(10 * KILLS):
            if kills == KILLS:
                break
            before = len(_rows(out)) if out.exists() else 0
            pid = runs.start(argv(out))
            if runs.wait(rng.uniform(0.0, 1.0) * (startup + window) * scale) is not None:
                continue  # it finished first
            sig = rng.choice(SIGNALS)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # it ended, and the server reaped it, between the wait and the signal
            code = runs.wait()
            if code == 8:
                continue  # it finished between the wait and the signal
            # 130 / 143: the run ended itself. -SIGINT / -SIGTERM: the signal came between the fork and
            # cli.main (Python's own handlers still in place), before the run could write anything.
            assert code in (-signal.SIGKILL, -signal.SIGINT, -signal.SIGTERM, 130, 143)
            kills += 1
            by_signal[sig] += 1
            if (len(_rows(out)) if out.exists() else 0) - before > share:
                scale /= 2
        assert kills == KILLS and all(by_signal.values())
        assert len(_rows(out)) < ROWS  # the kills came before the end

        runs.start(argv(out))
        assert runs.wait() == 8
    finally:
        runs.close()
    got, want = _rows(out), _rows(reference)
    assert sorted(got) == list(range(ROWS))
    assert [i for i, docs in got.items() if len(docs) > 1] == []  # nothing twice
    for i, (doc,) in got.items():
        assert doc == want[i][0]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
