// The run's view: the prompt token by token, a token's alternatives, a panel per hole, distribution bars.
import { escapeHtml } from "./highlight.js";

// Probability → background colour: red (unlikely) through amber to green (likely).
export function colour(p) {
  const hue = Math.round(8 + 122 * Math.max(0, Math.min(1, p)));
  return `hsl(${hue} 70% 84%)`;
}

const visible = (t) => t.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·") || "∅";
const pct = (p) => (p === null || p === undefined ? "—" : `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 2 : 1)}%`);

export class RunView {
  constructor({ prompt, detail, holes, distributions }) {
    Object.assign(this, { promptEl: prompt, detailEl: detail, holesEl: holes, distEl: distributions });
    this.pinned = null;
    prompt.addEventListener("mouseover", (e) => {
      const t = e.target.closest(".tok");
      if (t && !this.pinned) this.show(t);
    });
    prompt.addEventListener("click", (e) => {
      const t = e.target.closest(".tok");
      if (!t) return;
      if (this.pinned) this.pinned.classList.remove("pinned");
      this.pinned = this.pinned === t ? null : t;
      if (this.pinned) t.classList.add("pinned");
      this.show(t);
    });
    this.clear();
  }

  clear() {
    this.rows = new Map();      // row → {el, open: [hole records]}
    this.tokens = [];           // token events, by span index
    this.pinned = null;
    this.promptEl.innerHTML = "";
    this.holesEl.innerHTML = "";
    this.distEl.innerHTML = "";
    this.detailEl.innerHTML = '<span class="hint">Hover or click a token to see what the model preferred and what the mask allowed.</span>';
  }

  row(r) {
    let row = this.rows.get(r);
    if (!row) {
      const el = document.createElement("div");
      el.className = "row";
      el.dataset.row = r;
      this.promptEl.append(el);
      row = { el, open: [], target: el };
      this.rows.set(r, row);
      if (this.rows.size > 1) this.promptEl.classList.add("several");
    }
    return row;
  }

  text(ev) {
    const s = document.createElement("span");
    s.className = ev.kind === "role" ? "text role-text" : ev.kind === "value" ? "text value-text" : "text";
    s.textContent = ev.text;
    this.row(ev.row).el.append(s);
  }

  hole(ev) {
    const row = this.row(ev.row);
    const group = document.createElement("span");
    group.className = "hole-value";
    group.dataset.name = ev.name;
    row.el.append(group);
    const panel = document.createElement("div");
    panel.className = "hole-panel running";
    panel.dataset.name = ev.name;
    panel.innerHTML = `<h3><span class="name">${escapeHtml(ev.name)}</span>` +
      (this.rows.size > 1 ? `<span class="rowtag">result ${ev.row + 1}</span>` : "") +
      `<span class="reason">decoding…</span></h3>` +
      `<div class="constraint">${ev.constraint ? escapeHtml(ev.constraint) : '<span class="none">no constraint</span>'}</div>` +
      `<dl><dt>value</dt><dd class="value"></dd><dt>tokens</dt><dd class="tokens">0</dd>` +
      `<dt>forward passes</dt><dd class="passes">—</dd><dt>line</dt><dd>${ev.line ?? "—"}:${ev.column ?? "—"}</dd></dl>`;
    this.holesEl.append(panel);
    const rec = { ev, group, panel, count: 0 };
    row.open.push(rec);
    group.addEventListener("mouseenter", () => panel.classList.add("lit"));
    group.addEventListener("mouseleave", () => panel.classList.remove("lit"));
    panel.addEventListener("mouseenter", () => group.classList.add("lit"));
    panel.addEventListener("mouseleave", () => group.classList.remove("lit"));
  }

  // Remove `heal` from the end of the row's prompt text (token healing took it back).
  takeBack(r, heal) {
    const texts = this.row(r).el.querySelectorAll(":scope > .text");
    const last = texts[texts.length - 1];
    if (last && last.textContent.endsWith(heal)) last.textContent = last.textContent.slice(0, -heal.length);
  }

  openHole(r, name) {
    const open = this.row(r).open;
    for (let i = open.length - 1; i >= 0; i--) if (open[i].ev.name === name) return open[i];
    return null;
  }

  token(ev) {
    const rec = this.openHole(ev.row, ev.hole);
    const s = document.createElement("span");
    s.className = `tok ${ev.how}`;
    // A healed token re-spells the prompt's last characters (`heal`): they move from the prompt
    // text into the token. `shown` is what a token adds to the value; the hole's last token may
    // add its text only with hole_end.
    const heal = ev.how === "healed" ? (ev.heal || "") : "";
    if (heal) this.takeBack(ev.row, heal);
    s.dataset.heal = heal.length;
    s.textContent = heal + (ev.shown ?? ev.text.slice(heal.length));
    if (ev.text.includes("\n")) s.classList.add("nl");
    s.dataset.index = this.tokens.length;
    s.dataset.p = ev.p ?? "";
    if (ev.p !== null && ev.p !== undefined) s.style.background = colour(ev.p);  // chosen, or healed by a choice
    s.title = `${ev.how} · p ${pct(ev.p)} · ${ev.allowed} / ${ev.vocab} allowed`;
    this.tokens.push(ev);
    (rec ? rec.group : this.row(ev.row).el).append(s);
    if (rec) {
      rec.count += 1;
      rec.panel.querySelector(".tokens").textContent = rec.count;
      rec.panel.querySelector(".value").textContent += s.textContent.slice(heal.length);
    }
  }

  holeEnd(ev) {
    const row = this.row(ev.row);
    const rec = this.openHole(ev.row, ev.name);
    if (!rec) return;
    row.open.splice(row.open.indexOf(rec), 1);
    const p = rec.panel;
    p.classList.remove("running");
    p.querySelector(".reason").textContent = ev.reason;
    p.querySelector(".reason").dataset.reason = ev.reason;
    p.querySelector(".value").textContent = JSON.stringify(ev.value);
    p.querySelector(".tokens").textContent = ev.tokens;
    p.querySelector(".passes").textContent = ev.passes;
    this.reconcile(rec.group, ev.text, p);
  }

  // Make the hole's spans spell its final text: the last token's text arrives with hole_end, a
  // STOPS_BEFORE phrase is dropped, a decorator may rewrite the value.
  reconcile(group, text, panel) {
    const spans = [...group.querySelectorAll(".tok")];
    const own = (t) => t.textContent.slice(Number(t.dataset.heal || 0));  // the token's part of the value
    const shown = spans.map(own).join("");
    if (shown === text) {  // a token that added nothing (a STOPS_BEFORE phrase): shown struck out
      for (const t of spans) {
        if (t.textContent === "") {
          t.textContent = this.tokens[Number(t.dataset.index)].text;
          t.classList.add("dropped");
          t.title = `not kept in the prompt · ${t.title}`;
        }
      }
      return;
    }
    if (text.startsWith(shown) && spans.length) {
      spans[spans.length - 1].textContent += text.slice(shown.length);
      return;
    }
    let kept = "";
    for (const t of spans) {
      if (!t.classList.contains("dropped") && text.startsWith(kept + own(t))) kept += own(t);
      else t.classList.add("dropped");
    }
    for (const t of group.querySelectorAll(".dropped")) t.title = `not kept in the prompt · ${t.title}`;
    if (kept !== text) {
      const rest = document.createElement("span");
      rest.className = "text value-text";
      rest.textContent = text.slice(kept.length);
      group.append(rest);
    }
    const note = document.createElement("div");
    note.className = "kept";
    note.textContent = `kept in the prompt: ${JSON.stringify(text)}`;
    panel.append(note);
  }

  distribution(ev) {
    const box = document.createElement("div");
    box.className = "distribution";
    const entries = Object.entries(ev.scores).sort((a, b) => b[1] - a[1]);
    box.innerHTML = `<h3>distribution of <span class="name">${escapeHtml(ev.name)}</span></h3>` +
      entries.map(([v, p]) => `<div class="bar-row"><span class="label">${escapeHtml(visible(v))}</span>` +
        `<span class="bar"><span style="width:${(100 * p).toFixed(1)}%"></span></span>` +
        `<span class="num">${pct(p)}</span></div>`).join("");
    this.distEl.append(box);
  }

  show(span) {
    const ev = this.tokens[Number(span.dataset.index)];
    if (!ev) return;
    const tops = [...(ev.top || [])].sort((a, b) => (b.p_raw ?? 0) - (a.p_raw ?? 0));
    const max = Math.max(1e-9, ...tops.map((t) => t.p_raw ?? 0));
    this.detailEl.innerHTML =
      `<div class="head"><code class="which">${escapeHtml(visible(ev.text))}</code>` +
      `<span class="how ${ev.how}">${ev.how}</span>` +
      `<span class="mask-badge" title="tokens the mask allowed / vocabulary size">${ev.allowed} / ${ev.vocab}</span></div>` +
      `<dl><dt>hole</dt><dd>${escapeHtml(ev.hole ?? "—")}</dd>` +
      `<dt>p under the mask</dt><dd>${pct(ev.p)}</dd><dt>p before the mask</dt><dd>${pct(ev.p_raw)}</dd>` +
      `<dt>time</dt><dd>${ev.ms === undefined ? "—" : ev.ms.toFixed(1) + " ms"}</dd><dt>id</dt><dd>${ev.id}</dd></dl>` +
      (tops.length ? `<div class="alternatives"><div class="cap">the model's top tokens before the mask</div>` +
        tops.map((t) => `<div class="alt${t.allowed ? "" : " masked"}${t.id === ev.id ? " chosen" : ""}">` +
          `<code>${escapeHtml(visible(t.text))}</code><span class="bar"><span style="width:${(100 * (t.p_raw ?? 0) / max).toFixed(1)}%"></span></span>` +
          `<span class="num">${pct(t.p_raw)}</span>${t.allowed ? "" : '<span class="why">masked</span>'}</div>`).join("") +
        "</div>" : "");
  }
}
