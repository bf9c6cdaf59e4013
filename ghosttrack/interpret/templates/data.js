"use strict";
// The browser's data: loading the data files on demand and unpacking them (see browser.py, pack.py).
// Data files call GT.overview(...), GT.tokens(...), GT.part(i, ...) and GT.text(i, ...); see
// ghosttrack/interpret/browser.py (what each holds) and pack.py (how windows and activations are packed).
const GT = window.GT = { data: null, table: null, parts: {}, waiting: {}, texts: {}, textWaiting: {} };
GT.overview = function (data) { GT.data = data; };
GT.tokens = function (table) {
  GT.table = table; GT.eos = new Set(table.eos);
  (GT.waiting.tokens || []).forEach(fn => fn());
  delete GT.waiting.tokens;
};
GT.part = function (index, part) {
  GT.parts[index] = part;
  (GT.waiting[index] || []).forEach(fn => fn());
  delete GT.waiting[index];
};
GT.text = function (index, texts) {
  GT.texts[index] = texts;
  (GT.textWaiting[index] || []).forEach(fn => fn());
  delete GT.textWaiting[index];
};

function bytes(b64) { const s = atob(b64), out = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i); return out; }
// Unsigned LEB128 varints (pack.varints) -> numbers.
function varints(b64) {
  const raw = bytes(b64), out = [];
  let value = 0, scale = 1;
  for (const b of raw) { value += (b & 127) * scale; scale *= 128; if (!(b & 128)) { out.push(value); value = 0; scale = 1; } }
  return out;
}
// pack.trimmed_codes -> one uint8 code per token: a varint count of leading zeros, the codes, zeros to the end.
function untrim(raw, len) {
  let lead = 0, scale = 1, at = 0;
  for (;;) { const b = raw[at++]; lead += (b & 127) * scale; scale *= 128; if (!(b & 128)) break; }
  const out = new Uint8Array(len);
  out.set(raw.subarray(at, at + Math.max(0, len - lead)), lead);
  return out;
}
// A data file's token stream (table indices) and, per stream offset, the store row (-1: none); decoded once.
function stream(part) {
  if (part.ids) return part;
  part.ids = varints(part.tokens); part.rows = new Float64Array(part.ids.length);
  let at = 0, end = 0;
  for (let s = 0; s < part.spans.length; s += 2) {
    const gap = part.spans[s], len = part.spans[s + 1], first = gap < 0 ? -1 : end + gap;
    for (let j = 0; j < len; j++) part.rows[at + j] = first < 0 ? -1 : first + j;
    at += len; if (first >= 0) end = first + len;
  }
  return part;
}
// A packed example -> [activation, position, token texts, token index, store row, activations (null: none), doc start, EOS indices].
function unpackExample(part, scale, ex) {
  const [act, pos, offset, codes] = ex, [len, k, docStart] = ex.length > 4 ? ex.slice(4) : [...part.window, 0];
  const ids = part.ids.slice(offset, offset + len), q = codes === null ? null : untrim(bytes(codes), len);
  const acts = q && Array.from(q, c => c === 255 ? null : c * scale / 254);
  if (acts) acts[k] = act;  // the value at the example's own token as written (4 digits)
  const eos = []; ids.forEach((t, i) => { if (GT.eos.has(t)) eos.push(i); });
  return [act, pos, ids.map(t => GT.table.pieces[t]), k, part.rows[offset + k], acts, !!docStart, eos];
}
function unpackFeature(part, rec) {
  stream(part);
  const piece = ([t, v]) => [GT.table.pieces[t], v], ex = e => unpackExample(part, rec.scale, e);
  return { ...rec, common: rec.common.map(piece), examples: rec.examples.map(ex),
    quantiles: rec.quantiles.map(([lo, hi, exs]) => [lo, hi, exs.map(ex)]),
    logits: rec.logits && { ...rec.logits, promoted: rec.logits.promoted.map(piece), suppressed: rec.logits.suppressed.map(piece) } };
}

// Per feature of text file p, the texts of its top contexts (its tokens joined), built once.
function searchTexts(p) {
  const t = GT.texts[p];
  if (!t.built) {
    const ids = varints(t.tokens), pieces = GT.table.pieces;
    t.built = t.features.map(flat => {
      const texts = [];
      for (let i = 0; i < flat.length; i += 2) texts.push(ids.slice(flat[i], flat[i] + flat[i + 1]).map(x => pieces[x]).join(""));
      return texts;
    });
  }
  return t.built;
}

function loadText(index, done) {
  if (!GT.table) return withTable(() => loadText(index, done));
  if (GT.texts[index]) return done();
  if (GT.textWaiting[index]) return GT.textWaiting[index].push(done);
  GT.textWaiting[index] = [done];
  loadScript(`browser_data/text_${String(index).padStart(4, "0")}.js`);
}

function loadAllText(done) {
  let left = GT.data.parts;
  if (!left) return done();
  for (let i = 0; i < GT.data.parts; i++) loadText(i, () => { if (--left === 0) done(); });
}

function loadScript(src) {
  const s = document.createElement("script");
  s.src = src;
  s.onerror = () => fail(`could not load ${s.src}; keep the browser_data folder next to index.html`);
  document.head.append(s);
}
// The token table (tokens.js) loads once, with the first feature page or search.
function withTable(done) {
  if (GT.table) return done();
  if (!GT.waiting.tokens) { GT.waiting.tokens = []; loadScript("browser_data/tokens.js"); }
  GT.waiting.tokens.push(done);
}
function loadPart(index, done) {
  if (!GT.table) return withTable(() => loadPart(index, done));
  if (GT.parts[index]) return done();
  if (GT.waiting[index]) return GT.waiting[index].push(done);
  GT.waiting[index] = [done];
  loadScript(`browser_data/features_${String(index).padStart(4, "0")}.js`);
}

