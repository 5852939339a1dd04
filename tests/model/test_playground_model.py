"""The playground command on the default model, in a real browser: examples/capital.lmq runs and shows its tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmql_lite

pytestmark = pytest.mark.model
CAPITAL = Path(__file__).resolve().parents[2] / "examples" / "capital.lmq"

# The prompt as the page shows it: its text and the tokens kept (a dropped STOPS_BEFORE phrase struck out).
PROMPT_TEXT = "el => [...el.querySelectorAll('.text, .tok:not(.dropped)')].map(e => e.textContent).join('')"
# A hole's value as the page shows it: its tokens, less the prompt text a healed token re-spelt.
VALUE_TEXT = ("el => [...el.querySelectorAll('.tok:not(.dropped)')]"
              ".map(t => t.textContent.slice(Number(t.dataset.heal || 0))).join('')")

@pytest.fixture
def playground_url():
    """`lmql-lite playground examples/capital.lmq --port 0 --no-browser`, as a user starts it."""
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen([sys.executable, "-m", "lmql_lite", "playground", str(CAPITAL), "--port", "0",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        yield line.split()[3]
    finally:
        proc.terminate()
        proc.wait(60)  # after a model has run, the process takes several seconds to end


def test_capital_runs_on_the_default_model_through_the_page(chromium, playground_url, default_model, tmp_path):
    page = chromium.new_context(viewport={"width": 1440, "height": 760}, accept_downloads=True).new_page()
    page.set_default_timeout(300_000)  # the server process loads the default model on the first run (slow on a busy machine)
    page.goto(playground_url)
    page.wait_for_selector("#inputs input[name='country']")
    assert page.input_value("#source") == CAPITAL.read_text()
    page.fill("#inputs input[name='country']", "France")
    page.click("#run")
    page.wait_for_function("document.body.dataset.finished")
    assert page.text_content("#status").startswith("done")
    expected = lmql_lite.run(str(CAPITAL), model=default_model, country="France")
    assert page.eval_on_selector("#prompt .row", PROMPT_TEXT) == expected.prompt
    assert page.eval_on_selector(".hole-value[data-name='CITY']", VALUE_TEXT) == expected.variables["CITY"]
    assert len(page.query_selector_all(".hole-panel")) == 2 and page.query_selector_all(".tok.chosen")
    with page.expect_download() as d:
        page.click("#download")
    assert json.loads(Path(d.value.path()).read_text()) == expected.to_json()
    page.click(".hole-value[data-name='COAST'] .tok")  # the screenshot shows a choice's mask and alternatives
    assert page.text_content("#detail .mask-badge").endswith(f"/ {len(default_model.vocabulary)}")
    page.screenshot(path=str(tmp_path / "playground.png"))
    target = os.environ.get("LMQL_LITE_SCREENSHOT")  # docs/playground.png is made this way
    if target:
        page.screenshot(path=target)
    page.context.close()
