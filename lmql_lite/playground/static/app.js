// The playground page: the editor, inputs and settings; Run streams events from the server into the view.
import { highlight, escapeHtml } from "./highlight.js";
import { RunView } from "./tokens.js";

const $ = (id) => document.getElementById(id);
const source = $("source");
const view = new RunView({ prompt: $("prompt"), detail: $("detail"), holes: $("holes"), distributions: $("distributions") });
let current = null;       // {id, events: EventSource}
let errorAt = null;       // {line, column} of the error shown in the editor
const values = {};        // input name → what the user typed, kept while the query changes

// ---- the editor ---------------------------------------------------------------------------

function render() {
  let html = highlight(source.value);
  $("highlight").innerHTML = html + "\n";
  placeCaret();
}

function placeCaret() {
  let mark = document.querySelector(".editor .caret-mark");
  if (!errorAt || !errorAt.line) { if (mark) mark.remove(); return; }
  if (!mark) {
    mark = document.createElement("div");
    mark.className = "caret-mark";
    $("editor").append(mark);
  }
  const style = getComputedStyle(source);
  const probe = document.createElement("span");
  probe.textContent = "M".repeat(20);
  probe.style.font = style.font;
  probe.style.visibility = "hidden";
  probe.style.position = "absolute";
  document.body.append(probe);
  const charWidth = probe.getBoundingClientRect().width / 20;
  probe.remove();
  const lineHeight = parseFloat(style.lineHeight);
  const top = parseFloat(style.paddingTop) + (errorAt.line - 1) * lineHeight - source.scrollTop;
  const left = parseFloat(style.paddingLeft) + ((errorAt.column || 1) - 1) * charWidth - source.scrollLeft;
  Object.assign(mark.style, { top: `${top}px`, left: `${left}px`, height: `${lineHeight}px`, width: `${charWidth}px` });
}

source.addEventListener("input", () => { errorAt = null; render(); scheduleInputs(); });
source.addEventListener("scroll", () => {
  const pre = document.querySelector(".editor .highlight");
  pre.scrollTop = source.scrollTop;
  pre.scrollLeft = source.scrollLeft;
  placeCaret();
});
source.addEventListener("keydown", (e) => {
  if (e.key === "Tab" && !e.shiftKey) {  // indent, as a code editor does
    e.preventDefault();
    source.setRangeText("    ", source.selectionStart, source.selectionEnd, "end");
    source.dispatchEvent(new Event("input"));
  } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    run();
  }
});

function load(name, text) {
  source.value = text;
  $("filename").textContent = name || "";
  errorAt = null;
  showError(null);
  render();
  scheduleInputs(0);
}

// ---- inputs: the query's free variables, asked of the server --------------------------------

let inputsTimer = null;
function scheduleInputs(delay = 350) {
  clearTimeout(inputsTimer);
  inputsTimer = setTimeout(refreshInputs, delay);
}

async function refreshInputs() {
  const text = source.value;
  const r = await fetch("/api/inputs", { method: "POST", body: JSON.stringify({ source: text }) });
  if (!r.ok || text !== source.value) return;
  const { inputs, error } = await r.json();
  $("check").textContent = error ? `${where(error)}${error.message}` : "";
  $("check").className = error ? "check bad" : "check";
  if (error) return;  // keep the fields while the text does not parse
  const box = $("inputs");
  for (const el of box.querySelectorAll("input")) values[el.name] = el.value;
  box.innerHTML = inputs.length ? "" : '<span class="none">the query reads no inputs</span>';
  for (const name of inputs) {
    const label = document.createElement("label");
    label.innerHTML = `<span>${escapeHtml(name)}</span>`;
    const input = document.createElement("input");
    input.name = name;
    input.value = values[name] ?? "";
    input.placeholder = "text, or =JSON";
    label.append(input);
    box.append(label);
  }
}

function inputValues() {
  const out = {};
  for (const el of $("inputs").querySelectorAll("input")) {
    // A value written `=[1, 2]` is JSON (as the CLI's NAME:=JSON); anything else is text.
    if (el.value.startsWith("=")) {
      try { out[el.name] = JSON.parse(el.value.slice(1)); continue; } catch { /* text after all */ }
    }
    out[el.name] = el.value;
  }
  return out;
}

// ---- a run ----------------------------------------------------------------------------------

const where = (e) => (e.line ? `line ${e.line}, column ${e.column ?? 1}: ` : "");

function showError(e) {
  const box = $("error");
  if (!e) { box.hidden = true; box.innerHTML = ""; return; }
  box.hidden = false;
  const lines = source.value.split("\n");
  const line = e.source_line ?? (e.line ? lines[e.line - 1] : null);
  const file = e.file && !e.file.startsWith("<") ? e.file : ($("filename").textContent || "query");
  box.innerHTML = `<div class="kind">${escapeHtml(e.kind || "error")}</div>` +
    `<div class="message">${e.line ? `<span class="pos">${escapeHtml(file)}:${e.line}:${e.column ?? 1}</span> ` : ""}` +
    `${escapeHtml(e.message)}</div>` +
    (line !== null && line !== undefined ? `<pre class="source">${escapeHtml(line)}\n${" ".repeat(Math.max(0, (e.column || 1) - 1))}^</pre>` : "");
  errorAt = e.line ? { line: e.line, column: e.column } : null;
  placeCaret();
}

function setStatus(text, cls = "") {
  $("status").textContent = text;
  $("status").className = `status ${cls}`;
}

function running(on) {
  $("run").disabled = on;
  $("stop").disabled = !on;
  document.body.classList.toggle("running", on);
}

async function run() {
  if (current) return;  // one run at a time: Stop first
  view.clear();
  showError(null);
  $("download").classList.add("disabled");
  $("download").removeAttribute("href");
  running(true);
  setStatus("starting…");
  const body = { source: source.value, inputs: inputValues(), decoder: $("decoder").value,
                 seed: $("seed").value.trim(), model: $("model").value.trim() };
  let id;
  try {
    const r = await fetch("/api/run", { method: "POST", body: JSON.stringify(body) });
    const doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
    id = doc.id;
  } catch (err) {
    running(false);
    setStatus(`could not start: ${err.message}`, "bad");
    return;
  }
  const events = new EventSource(`/api/runs/${id}/events`);
  current = { id, events, tokens: 0, results: 0, state: "running" };
  document.body.dataset.run = id;
  const on = (type, fn) => events.addEventListener(type, (m) => fn(JSON.parse(m.data)));
  on("status", (e) => setStatus(e.message + "…"));
  on("text", (e) => view.text(e));
  on("hole", (e) => { view.hole(e); setStatus(`decoding ${e.name}…`); });
  on("token", (e) => { view.token(e); current.tokens += 1; });
  on("hole_end", (e) => view.holeEnd(e));
  on("distribution", (e) => view.distribution(e));
  on("result", () => { current.results += 1; });
  on("error", (e) => { current.state = "error"; showError(e); });
  on("stopped", () => { current.state = "stopped"; });
  on("done", () => finish());
  events.onerror = () => { if (current && current.events === events && events.readyState === EventSource.CLOSED) finish("lost"); };
}

function finish(lost) {
  const run = current;
  if (!run) return;
  run.events.close();
  current = null;
  running(false);
  document.body.dataset.finished = run.id;
  const n = run.tokens;
  if (lost) setStatus("the connection to the server was lost", "bad");
  else if (run.state === "error") setStatus("failed", "bad");
  else if (run.state === "stopped") setStatus(`stopped after ${n} token${n === 1 ? "" : "s"}`, "warn");
  else setStatus(`done: ${n} token${n === 1 ? "" : "s"}`, "good");
  if (run.results) {
    $("download").href = `/api/runs/${run.id}/result.json`;
    $("download").setAttribute("download", `run-${run.id}.json`);
    $("download").classList.remove("disabled");
  }
}

async function stop() {
  if (!current) return;
  $("stop").disabled = true;
  setStatus("stopping…");
  await fetch(`/api/runs/${current.id}/stop`, { method: "POST" });
}

$("run").addEventListener("click", run);
$("stop").addEventListener("click", stop);

// ---- start-up: examples and the file given on the command line -----------------------------

async function start() {
  const [config, examples] = await Promise.all([fetch("/api/config").then((r) => r.json()),
                                                fetch("/api/examples").then((r) => r.json())]);
  if (config.remote) $("warning").classList.add("remote");
  for (const name of config.models) {
    const o = document.createElement("option");
    o.value = name;
    $("model-names").append(o);
  }
  const picker = $("examples");
  for (const ex of examples) {
    const o = document.createElement("option");
    o.value = ex.name;
    o.textContent = ex.name;
    picker.append(o);
  }
  picker.addEventListener("change", () => {
    const ex = examples.find((x) => x.name === picker.value);
    if (ex) load(ex.name, ex.source);
  });
  if (config.preload) {
    if (examples.some((x) => x.name === config.preload.name && x.source === config.preload.source)) picker.value = config.preload.name;
    load(config.preload.name, config.preload.source);
  }
  else if (examples.length) { picker.value = examples[0].name; load(examples[0].name, examples[0].source); }
  document.body.dataset.ready = "1";
}

start();
