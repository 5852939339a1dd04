// .lmq syntax highlighting: the query text as HTML spans (strings, holes, interpolations, keywords, Python).

const KEYWORDS = new Set(["argmax", "sample", "beam", "from", "where", "distribution", "in", "not", "and", "or",
  "return", "if", "elif", "else", "for", "while", "def", "import", "as", "break", "continue", "pass", "try",
  "except", "finally", "with", "lambda", "yield", "await", "async", "class", "is", "global", "nonlocal"]);
const CONSTANTS = new Set(["True", "False", "None"]);
const BUILTINS = new Set(["STOPS_AT", "STOPS_BEFORE", "TOKENS", "INT", "FLOAT", "REGEX", "JSON", "GRAMMAR", "len",
  "print", "range", "str", "int", "float", "list", "dict"]);

export function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

const span = (cls, text) => `<span class="${cls}">${escapeHtml(text)}</span>`;

// One string literal's inside: [HOLE] and {expression} parts stand out; [[ ]] and {{ }} are literal.
function stringBody(text) {
  let out = "";
  let i = 0;
  while (i < text.length) {
    const two = text.slice(i, i + 2);
    if (two === "[[" || two === "]]" || two === "{{" || two === "}}") { out += escapeHtml(two); i += 2; continue; }
    const c = text[i];
    const close = c === "[" ? "]" : c === "{" ? "}" : null;
    const end = close ? text.indexOf(close, i + 1) : -1;
    if (end > i) {
      const part = text.slice(i, end + 1);
      out += span(c === "[" ? "hole" : part.startsWith("{:") ? "role" : "interp", part);
      i = end + 1;
      continue;
    }
    out += escapeHtml(c);
    i += 1;
  }
  return out;
}

const TOKEN = new RegExp([
  String.raw`(#[^\n]*)`,                                                           // 1 comment
  String.raw`([rRbBfFuU]{0,2})("""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?)`, // 2 prefix, 3 string
  String.raw`([A-Za-z_][A-Za-z0-9_]*)`,                                             // 4 name
  String.raw`(\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)`,                               // 5 number
].join("|"), "g");

export function highlight(source) {
  let out = "";
  let last = 0;
  for (const m of source.matchAll(TOKEN)) {
    out += escapeHtml(source.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1] !== undefined) out += span("comment", m[1]);
    else if (m[3] !== undefined) {
      const q = m[3].startsWith('"""') || m[3].startsWith("'''") ? 3 : 1;
      const closed = m[3].length >= 2 * q && m[3].endsWith(m[3].slice(0, q));
      const body = m[3].slice(q, closed ? m[3].length - q : m[3].length);
      const raw = /[rR]/.test(m[2]);
      out += `<span class="string">${escapeHtml(m[2] + m[3].slice(0, q))}${raw ? escapeHtml(body) : stringBody(body)}` +
             `${closed ? escapeHtml(m[3].slice(m[3].length - q)) : ""}</span>`;
    } else if (m[4] !== undefined) {
      const w = m[4];
      out += KEYWORDS.has(w) ? span("keyword", w) : CONSTANTS.has(w) ? span("constant", w)
           : BUILTINS.has(w) ? span("builtin", w) : escapeHtml(w);
    } else out += span("number", m[5]);
  }
  return out + escapeHtml(source.slice(last));
}
