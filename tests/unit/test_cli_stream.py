"""`lmql-lite run` as a process on a terminal (a pty) and a pipe: values stream token by token; Ctrl-C keeps what was printed."""
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from lmql_lite import cli, events

# The command on the fake model, each forward pass slowed to 20 ms as a real model's would be.
CHILD = """
import sys, time
from lmql_lite import api, cli
from lmql_lite.models.fake import FakeBatch, FakeModel
fake = FakeModel(bias={"<eos>": -50.0})
step = FakeBatch.step
def slow(self, feeds, only=None):
    time.sleep(0.02)
    return step(self, feeds, only)
FakeBatch.step = slow
api.model = lambda name=None: fake
sys.exit(cli.main(sys.argv[1:]))
"""
LONG = '"Story:[S]" where len(TOKENS(S)) < {n}\n"|end"\n'


def start(tmp_path, n, *, terminal):
    path = tmp_path / "q.lmq"
    path.write_text(LONG.format(n=n))
    # No drafts: they skip passes of the fake model's repetitive text, and the run would end before a Ctrl-C.
    argv = [sys.executable, "-c", CHILD, "run", str(path), "--no-color", "--no-speculate"]
    if not terminal:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE), None
    main, child = pty.openpty()
    proc = subprocess.Popen(argv, stdout=child, stderr=subprocess.PIPE)
    os.close(child)
    return proc, main


def read_chunks(fd, until=None, timeout=60.0):
    """(time, bytes) of each read from `fd`, until `until(so_far)` holds, EOF or the timeout."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:  # the pty's other end closed
            break
        if not data:
            break
        chunks.append((time.monotonic(), data))
        if until and until(b"".join(c for _, c in chunks)):
            break
    return chunks


def test_a_value_arrives_token_by_token_on_a_terminal(tmp_path):
    proc, fd = start(tmp_path, 60, terminal=True)
    try:
        chunks = read_chunks(fd)
    finally:
        proc.wait(timeout=60)
        os.close(fd)
    assert proc.returncode == 0
    out = b"".join(c for _, c in chunks).decode()
    assert out.startswith("Story:") and "|end" in out
    during = [c for c in chunks if b"Story:" not in c[1] and b"|end" not in c[1]]
    assert len(during) >= 5  # the value came in many pieces, over time
    assert during[-1][0] - during[0][0] > 0.2


def test_ctrl_c_keeps_the_text_printed_on_a_terminal(tmp_path):
    proc, fd = start(tmp_path, 400, terminal=True)
    try:
        before = read_chunks(fd, until=lambda out: len(out) > len(b"Story:") + 10)
        proc.send_signal(signal.SIGINT)
        after = read_chunks(fd, timeout=30)
        proc.wait(timeout=30)
    finally:
        os.close(fd)
    printed = b"".join(c for _, c in before + after).decode()
    assert proc.returncode == 130 and proc.stderr.read().decode().strip().endswith("interrupted")
    assert printed.startswith("Story:") and len(printed.strip()) > len("Story:") + 10 and "|end" not in printed


def test_ctrl_c_on_a_pipe_prints_the_value_decoded_so_far(tmp_path):
    proc, _ = start(tmp_path, 400, terminal=False)
    head = read_chunks(proc.stdout.fileno(), until=lambda out: b"Story:" in out)  # the hole has begun
    time.sleep(1.0)  # some 40 tokens at 20 ms a pass
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    out = (b"".join(c for _, c in head) + out).decode()
    assert proc.returncode == 130 and err.decode().strip().endswith("interrupted")
    assert out.startswith("Story:") and len(out.strip()) > len("Story:") + 10 and "|end" not in out


def test_a_pipe_gets_plain_text(tmp_path):
    proc, _ = start(tmp_path, 30, terminal=False)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.decode().startswith("Story:") and out.decode().endswith("|end\n")
    assert b"\x1b" not in out


@pytest.mark.parametrize("shown, final, written", [
    ("ab", "abc", "c"),                          # the last token's text comes with the end
    ("ab.x", "ab.", "\r\x1b[5C\x1b[J"),       # a stop phrase cut the token: back to column 5 ("Q:ab.")
    ("ab\n\nx", "ab\n", "\r\x1b[1A\x1b[J"),  # across lines: up to the start of the line after "ab"
])
def test_a_streamed_value_is_corrected_to_its_final_text(capsys, shown, final, written):
    printer = cli._Printer(color=False, show=True, tokens=True)
    printer(0, "Q:", "prompt")
    for ch in shown:
        printer.event(events.Token(0, "X", 1, ch, "chosen", 0.5, None, 2, 3, shown=ch))
    assert capsys.readouterr().out == "Q:" + shown
    printer(0, final, "value")
    assert capsys.readouterr().out == written and printer.text(0) == "Q:" + final
