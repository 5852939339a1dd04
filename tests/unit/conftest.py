"""Fixtures of the playground tests: a fake model that decodes slowly, and the server running on a free port."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from lmql_lite.models.fake import FakeModel, FakeBatch


class SlowFake(FakeModel):
    """The fake model, `delay` seconds per forward pass, counting every pass of every batch it made."""

    def __init__(self, delay: float = 0.02):
        super().__init__()
        self.delay = delay
        self.batches: list[FakeBatch] = []

    def batch(self, rows: int = 1) -> FakeBatch:
        model = self

        class Slow(FakeBatch):
            def step(self, feeds, only=None):
                time.sleep(model.delay)
                return super().step(feeds, only)

        b = Slow(self, rows)
        self.batches.append(b)
        return b

    @property
    def forward_passes(self) -> int:
        return sum(b.forward_passes for b in self.batches)


@pytest.fixture
def playground_server(tmp_path):
    """The playground on 127.0.0.1 and a free port, in a thread, with models `fake`, `slow` and `a-loving` (likes "a");
    gives (base url, {name: model})."""
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    from lmql_lite.playground.server import Settings, bind, create_app
    models = {"fake": FakeModel(), "slow": SlowFake(), "a-loving": FakeModel(bias={"a": 3.0})}
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(models=models)), log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the playground server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", models
    server.should_exit = True
    thread.join(10)
    sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
