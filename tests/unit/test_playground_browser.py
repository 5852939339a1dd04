"""The playground in a real browser (Debian's chromium driven by Playwright) on the fake model."""
from __future__ import annotations

import json
import time

import pytest

import lmql_lite
from lmql_lite.models.fake import FakeModel

CHOICE = ('argmax\n    "Review: {review}\\nIs it good?[A]" where A in [" yes", " no"]\n'
          '    "\\nSo:[B]" where B in [" positive"]\n    return A\n')

# The prompt as the page shows it: its text and the tokens kept (a dropped STOPS_BEFORE phrase struck out).
PROMPT_TEXT = "el => [...el.querySelectorAll('.text, .tok:not(.dropped)')].map(e => e.textContent).join('')"
# A hole's value as the page shows it: its tokens, less the prompt text a healed token re-spelt.
VALUE_TEXT = ("el => [...el.querySelectorAll('.tok:not(.dropped)')]"
              ".map(t => t.textContent.slice(Number(t.dataset.heal || 0))).join('')")

@pytest.fixture
def page(chromium, playground_server):
    base, models = playground_server
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    yield page
    context.close()


def type_query(page, text: str) -> None:
    page.fill("#source", text)
    page.dispatch_event("#source", "input")


def run_and_wait(page) -> str:
    before = page.get_attribute("body", "data-finished")
    page.click("#run")
    page.wait_for_function("prev => document.body.dataset.finished && document.body.dataset.finished !== prev",
                           arg=before)
    return page.get_attribute("body", "data-finished")


def test_a_choice_query_shows_tokens_mask_and_forced_style(page, playground_server, tmp_path):
    base, models = playground_server
    type_query(page, CHOICE)
    page.wait_for_selector("#inputs input[name='review']")
    page.fill("#inputs input[name='review']", "Great food.")
    page.fill("#model", "fake")
    run_and_wait(page)
    assert page.text_content("#status").startswith("done")
    expected = lmql_lite.run(CHOICE, model=FakeModel(), review="Great food.")

    # The prompt, span by span, is the result's prompt.
    assert page.eval_on_selector("#prompt .row", PROMPT_TEXT) == expected.prompt
    assert page.eval_on_selector(".hole-value[data-name='A']", VALUE_TEXT) == expected.variables["A"]
    assert page.text_content(".hole-value[data-name='A'] .tok.healed") == "?"  # healing re-spelt the prompt's "?"
    # A chosen token is coloured by its probability; the forced " positive" is styled as forced.
    chosen = page.query_selector(".hole-value[data-name='A'] .tok.chosen")
    assert chosen.get_attribute("style").startswith("background")
    forced = page.query_selector_all(".hole-value[data-name='B'] .tok.forced")
    assert [t.text_content() for t in forced] == [" positive"] and not forced[0].get_attribute("style")

    # Clicking a chosen token shows its mask size: the choice allows " ", " yes" and " no".
    vocab = len(models["fake"].vocabulary)
    first = page.query_selector(".hole-value[data-name='A'] .tok.chosen")
    first.click()
    assert page.text_content("#detail .mask-badge") == f"3 / {vocab}"
    alternatives = page.query_selector_all("#detail .alt")
    assert alternatives and any("masked" in (a.get_attribute("class") or "") for a in alternatives)
    first.click()  # a click pins a token's details; a second click lets hovering show others
    forced[0].hover()
    assert page.text_content("#detail .mask-badge") == f"1 / {vocab}"

    # One panel per hole: its constraint, value, token count, forward passes and why it ended.
    panel = page.query_selector(".hole-panel[data-name='B']")
    assert "B in" in panel.query_selector(".constraint").text_content()
    assert panel.query_selector(".value").text_content() == '" positive"'
    assert panel.query_selector(".reason").text_content() != "decoding…"

    # The JSON download equals lmql_lite.run's result.
    with page.expect_download() as d:
        page.click("#download")
    downloaded = json.loads(open(d.value.path(), encoding="utf-8").read())
    assert downloaded == expected.to_json()
    page.screenshot(path=str(tmp_path / "playground-choice.png"), full_page=True)


def test_a_dropped_stop_phrase_is_struck_out(page):
    query = '"Go:[X]" where STOPS_BEFORE(X, "a") and len(TOKENS(X)) < 30\n'
    type_query(page, query)
    page.fill("#model", "a-loving")
    run_and_wait(page)
    expected = lmql_lite.run(query, model=FakeModel(bias={"a": 3.0}))
    assert page.text_content(".hole-value[data-name='X'] .tok.dropped") == "a"  # the phrase the value stopped before
    assert page.eval_on_selector("#prompt .row", PROMPT_TEXT) == expected.prompt
    assert page.eval_on_selector(".hole-value[data-name='X']", VALUE_TEXT) == expected.variables["X"]


def test_an_error_shows_with_a_caret_at_its_line(page):
    type_query(page, 'argmax\n    "Hello [A]" where A in ["x"] and A in ["y"]\n')
    page.fill("#model", "fake")
    run_and_wait(page)
    assert page.is_visible("#error")
    assert "2:" in page.text_content("#error .pos")
    source = page.text_content("#error pre.source")
    assert source.splitlines()[0] == '    "Hello [A]" where A in ["x"] and A in ["y"]' and source.splitlines()[1].strip() == "^"
    assert page.is_visible(".editor .caret-mark")
    assert "Traceback" not in page.text_content("body")


def test_stop_ends_a_long_run(page, playground_server):
    base, models = playground_server
    slow = models["slow"]
    type_query(page, '"Go:[X]" where len(TOKENS(X)) < 400\n')
    page.fill("#model", "slow")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('#prompt .tok').length >= 5")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.finished")
    assert page.text_content("#status").startswith("stopped")
    shown, passes = page.eval_on_selector_all("#prompt .tok", "els => els.length"), slow.forward_passes
    time.sleep(0.4)  # twenty passes' time at the slow model's pace
    assert page.eval_on_selector_all("#prompt .tok", "els => els.length") == shown
    assert slow.forward_passes == passes and passes < 150
    assert page.is_enabled("#run") and not page.is_enabled("#stop")
