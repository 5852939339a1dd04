"""The coloured token view as HTML: prompt text, then each hole's tokens coloured by probability (Jupyter, the playground).

Built from events (events.py): a token's background goes from red (p near 0) to green (p near
1) under the masked distribution the decoder chose from; forced and healed tokens are grey with
a dotted underline; hovering a token shows its probabilities, the mask's size and the top
alternatives (those the mask removed marked). A result without events shows its prompt with
the values marked. `CSS` is the stylesheet both views use.
"""
from __future__ import annotations

import html
from typing import Any, Iterable

from . import events

CSS = """
.lmql-lite { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; line-height: 1.7;
             white-space: pre-wrap; word-break: break-word; }
.lmql-lite .lt-role { color: #888; }
.lmql-lite .lt-hole { border-bottom: 2px solid #6a8fd8; }
.lmql-lite .lt-tok { border-radius: 2px; }
.lmql-lite .lt-forced, .lmql-lite .lt-healed { background: #e4e4e4; text-decoration: underline dotted #777; }
.lmql-lite .lt-value { background: #cfe8cf; border-radius: 2px; }
.lmql-lite .lt-result { margin-top: 0.5em; color: #333; }
.lmql-lite table.lt-dist td { padding: 0 0.6em 0 0; }
"""


def colour(p: float | None) -> str:
    """The background for a token chosen with probability p: red (0) to green (1)."""
    if p is None:
        return "#e4e4e4"
    return f"hsl({round(120 * min(max(p, 0.0), 1.0))}, 70%, 84%)"


def token_title(t: events.Token) -> str:
    """A token's hover text: how it was taken, p and p_raw, the mask's size, the alternatives."""
    lines = [f"{t.hole}: {t.text!r} ({t.how})"]
    if t.p is not None:
        lines.append(f"p = {t.p:.4f}" + (f"   p_raw = {t.p_raw:.4f}" if t.p_raw is not None else ""))
    lines.append(f"allowed {t.allowed} of {t.vocab} tokens   {t.ms:.1f} ms")
    for a in t.top:
        lines.append(f"  {a.text!r:<16} {a.p_raw:.4f}" + ("" if a.allowed else "  (masked out)"))
    return "\n".join(lines)


def token_span(t: events.Token) -> str:
    text = t.text[len(t.heal):] if t.how == "healed" and t.text.startswith(t.heal) else t.text
    style = "" if t.how != "chosen" else f' style="background:{colour(t.p)}"'
    return (f'<span class="lt-tok lt-{t.how}"{style} title="{html.escape(token_title(t))}">'
            f"{html.escape(text)}</span>")


def events_html(stream: Iterable[events.Event]) -> str:
    """The token view of one result's events (its text, holes, tokens, distributions), without the stylesheet."""
    out: list[str] = []
    for e in stream:
        if isinstance(e, events.Text):
            text = html.escape(e.text)
            out.append(f'<span class="lt-role">{text}</span>' if e.kind == "role" else
                       f'<span class="lt-value">{text}</span>' if e.kind == "value" else text)
        elif isinstance(e, events.Hole):
            title = e.name + (f" where {e.constraint}" if e.constraint else "")
            out.append(f'<span class="lt-hole" title="{html.escape(title)}">')
        elif isinstance(e, events.Token):
            out.append(token_span(e))
        elif isinstance(e, events.HoleEnd):
            out.append("</span>")
        elif isinstance(e, events.Distribution):
            rows = "".join(f"<tr><td>{html.escape(repr(v))}</td><td>{p:.1%}</td></tr>"
                           for v, p in sorted(e.scores.items(), key=lambda kv: -kv[1]))
            out.append(f'<table class="lt-dist" title="distribution {html.escape(e.name)}">{rows}</table>')
    return "".join(out)


def prompt_html(prompt: str, spans: list[tuple[int, int, str]]) -> str:
    """A prompt with its values marked (a result that kept no events)."""
    out, at = [], 0
    for start, end, name in spans:
        out.append(html.escape(prompt[at:start]))
        out.append(f'<span class="lt-value" title="{html.escape(name)}">{html.escape(prompt[start:end])}</span>')
        at = end
    out.append(html.escape(prompt[at:]))
    return "".join(out)


def result_html(result: Any) -> str:
    """A whole result for Jupyter: stylesheet, token view (or marked prompt), return value."""
    kept = result.trace.events
    body = events_html(kept) if kept else prompt_html(result.prompt, result.spans)
    value = "" if result.value is None else f'<div class="lt-result">→ {html.escape(repr(result.value))}</div>'
    return f'<style>{CSS}</style><div class="lmql-lite">{body}</div>{value}'
