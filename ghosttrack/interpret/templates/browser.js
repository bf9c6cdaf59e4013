"use strict";
// The browser's pages, drawn from GT.data and the unpacked feature records (data.js).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "-";
  if (x === 0) return "0";
  return Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3 ? x.toExponential(2) : Number(x.toPrecision(digits)).toString();
}
function pct(x) { return (100 * x).toPrecision(3) + "%"; }
function showToken(t) { return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }
// In chips a token stands alone: make its spaces visible.
function chipToken(t) { return showToken(t).replace(/ /g, "\u2423"); }
function featureLink(id) { return el("a", { href: "#feature=" + id, class: "flink" }, "#" + id); }
function route() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return Object.fromEntries(params.entries());
}

// Bar chart: bars = [{x0, x1, count, label}], x positions already in a common unit.
function barChart(bars, xLabel, width = 640, height = 170) {
  const pad = { l: 44, r: 28, t: 8, b: 34 };  // r: room for the last tick label
  const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (!bars.length) { svg.append(Object.assign(svgEl("text", { x: pad.l, y: 40 }), { textContent: "no data" })); return svg; }
  const xmin = bars[0].x0, xmax = bars[bars.length - 1].x1, ymax = Math.max(1, ...bars.map(b => b.count));
  const sx = x => pad.l + (x - xmin) / Math.max(xmax - xmin, 1e-12) * (width - pad.l - pad.r);
  const sy = y => height - pad.b - y / ymax * (height - pad.t - pad.b);
  for (const b of bars) {
    const r = svgEl("rect", { x: sx(b.x0) + 0.5, y: sy(b.count), width: Math.max(1, sx(b.x1) - sx(b.x0) - 1),
                              height: height - pad.b - sy(b.count), fill: "#f08c00" });
    r.append(Object.assign(svgEl("title"), { textContent: `${b.label}: ${b.count}` }));
    svg.append(r);
  }
  svg.append(svgEl("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, stroke: "#98a2b3" }));
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const x = xmin + (xmax - xmin) * i / ticks;
    svg.append(Object.assign(svgEl("text", { x: sx(x), y: height - pad.b + 14, "text-anchor": "middle" }),
                             { textContent: xLabel.tick(x) }));
  }
  svg.append(Object.assign(svgEl("text", { x: (width + pad.l) / 2, y: height - 4, "text-anchor": "middle" }), { textContent: xLabel.name }));
  svg.append(Object.assign(svgEl("text", { x: 4, y: pad.t + 10 }), { textContent: String(ymax) }));
  return svg;
}

function card(value, key, id) {
  const c = el("div", { class: "card" }, el("div", { class: "v", text: value }), el("div", { class: "k", text: key }));
  if (id) c.id = id;
  return c;
}

function renderOverview(app, params) {
  const d = GT.data, f = d.features, n = d.d_sae;
  const live = n - d.dead.count;
  app.append(el("h2", { id: "overview" }, `Layer ${d.layer}: ${n.toLocaleString()} features`));
  app.append(el("p", { class: "muted" }, `model ${d.model || "?"} \u00b7 hook ${d.hook || "?"} \u00b7 store ${d.store || "?"} \u00b7 SAE ${d.sae_path || "?"}`));
  app.append(el("div", { class: "cards" },
    card(live.toLocaleString(), "live features", "stat-live"),
    card(`${d.dead.count.toLocaleString()} (${pct(d.dead.fraction)})`, "dead (never active)", "stat-dead"),
    card(`${d.dense.count.toLocaleString()} (${pct(d.dense.fraction)})`, `dense (> ${pct(d.dense.threshold)} of rows)`, "stat-dense"),
    card(d.rows_scanned.toLocaleString(), "rows scanned", "stat-rows"),
    card((d.rows_skipped_flagged + d.rows_skipped_outliers + (d.rows_skipped_positions || 0)).toLocaleString(),
      "rows skipped (position 0" + ((d.skip_positions || []).length ? ", positions " + d.skip_positions.join(",") : "") + " / outliers)")));
  if (params.search !== undefined) renderSearch(app, params.search);  // results first, where the eye is
  if (d.peak_hint) renderPeaks(app, d);
  const dh = d.density_histogram, bars = [];
  for (let i = 0; i < dh.counts.length; i++) bars.push({ x0: dh.log10_edges[i], x1: dh.log10_edges[i + 1], count: dh.counts[i],
    label: `density 1e${dh.log10_edges[i].toFixed(2)} .. 1e${dh.log10_edges[i + 1].toFixed(2)}` });
  app.append(el("div", { class: "panel", id: "density-histogram" }, el("h3", {}, "Feature density (live features)"),
    barChart(bars, { name: "log10(fraction of rows where the feature fires)", tick: x => x.toFixed(1) })));
  renderTable(app, params);
  if (d.dense.count) {
    const list = el("div", { class: "panel", id: "dense-list" }, el("h3", {}, `Dense features (${d.dense.count})`));
    for (const x of d.dense.features) list.append(el("span", { class: "chip" }, featureLink(x.feature_id), " " + pct(x.density)));
    app.append(list);
  }
  if (d.dead.count) {
    const det = el("details", { class: "panel", id: "dead-list" }, el("summary", {}, `Dead features (${d.dead.count})`));
    const shown = d.dead.features.slice(0, 2000);
    det.append(el("p", { class: "ctx" }, shown.join(", ") + (d.dead.count > shown.length ? ", ..." : "")));
    app.append(det);
  }
}

// Rows that are the top example of many features (attention sinks the norm rule missed).
function renderPeaks(app, d) {
  const panel = el("div", { class: "panel hint", id: "peak-rows" }, el("h3", {}, "Rows that are the top example of many features"),
    el("p", {}, d.peak_hint));
  const peakTable = rows => {
    const table = el("table", {}, el("tr", {}, ...["row", "position", "top example of", "context", "features (strongest first)"].map(h => el("th", {}, h))));
    for (const r of rows) {
      const ctx = el("span", { class: "ctx" });
      r.tokens.forEach((t, i) => ctx.append(i === r.token_index ? el("span", { class: "tok peak" }, showToken(t)) : showToken(t)));
      const feats = el("td", {});
      r.feature_ids.slice(0, 12).forEach(id => feats.append(featureLink(id), " "));
      if (r.features > 12) feats.append("\u2026");
      table.append(el("tr", {}, el("td", { class: "num" }, String(r.row)), el("td", { class: "num" }, String(r.position)),
        el("td", { class: "num" }, `${r.features} features (${pct(r.share)})` + (r.top_by_max ? `, ${r.top_by_max} of the 50 strongest` : "")),
        el("td", {}, ctx), feats));
    }
    return table;
  };
  // The three most striking rows stay in view; the rest fold away so the overview stays short.
  if (d.peak_rows.length) panel.append(peakTable(d.peak_rows.slice(0, 3)));
  if (d.peak_rows.length > 3) panel.append(el("details", {}, el("summary", {}, `${d.peak_rows.length - 3} more rows`),
    peakTable(d.peak_rows.slice(3))));
  for (const p of d.peak_positions) panel.append(el("p", { class: "muted" },
    `position ${p.position}: the top example of ${p.features} of ${p.scope === "top_by_max" ? `the ${p.of} strongest` : `${p.of} live`} features `
    + `(${pct(p.share)}; chance, its share of the rows: ${pct(p.expected_share)})`
    + (p.suggest === undefined ? "" : p.suggest ? " \u2014 suggested for --skip-positions" : " \u2014 not a sink by the test above")));
  app.append(panel);
}

function renderTable(app, params) {
  const d = GT.data, f = d.features, n = d.d_sae, perPage = 50;
  const sort = params.sort || "density", page = Math.max(0, parseInt(params.page || "0", 10) || 0);
  const order = [...Array(n).keys()];
  if (sort !== "id") order.sort((a, b) => f[sort][b] - f[sort][a] || a - b);
  const pages = Math.ceil(n / perPage), rows = order.slice(page * perPage, (page + 1) * perPage);
  const panel = el("div", { class: "panel", id: "feature-table" });
  const sorter = el("span", {}, "sort by ");
  for (const [key, name] of [["density", "density"], ["count", "activations"], ["max", "max activation"], ["mean", "mean activation"], ["id", "id"]]) {
    sorter.append(key === sort ? el("b", {}, name) : el("a", { href: `#sort=${key}&page=0` }, name), " ");
  }
  panel.append(el("h3", {}, "Features"), sorter);
  const table = el("table", {}, el("tr", {}, ...["feature", "density", "activations", "max", "mean", "common tokens"].map(h => el("th", {}, h))));
  for (const i of rows) {
    const toks = el("td", {});
    for (const [t, c] of f.tokens[i]) toks.append(el("span", { class: "chip" }, chipToken(t)));
    table.append(el("tr", {}, el("td", {}, featureLink(i)), el("td", { class: "num" }, pct(f.density[i])),
      el("td", { class: "num" }, f.count[i].toLocaleString()), el("td", { class: "num" }, fmt(f.max[i])),
      el("td", { class: "num" }, fmt(f.mean[i])), toks));
  }
  panel.append(table);
  const pager = el("div", { class: "pager" });
  if (page > 0) pager.append(el("a", { class: "btn", href: `#sort=${sort}&page=${page - 1}` }, "\u2190 previous"));
  pager.append(el("span", { class: "muted" }, `page ${page + 1} of ${pages}`));
  if (page + 1 < pages) pager.append(el("a", { class: "btn", href: `#sort=${sort}&page=${page + 1}` }, "next \u2192"));
  panel.append(pager);
  app.append(panel);
}

// Search: features whose common tokens match (at once, exact trimmed case-insensitive matches
// first), then features whose top contexts contain the text (the text files load on first use).
function renderSearch(app, query) {
  const d = GT.data, q = query.trim().toLowerCase(), hits = [];
  if (q) d.features.tokens.forEach((toks, id) => {
    let best = 0, count = 0;
    for (const [t, c] of toks) {
      const tt = t.trim().toLowerCase();
      const score = tt === q ? 2 : tt.includes(q) ? 1 : 0;
      if (score > best || (score === best && score > 0 && c > count)) { best = score; count = c; }
    }
    if (best) hits.push({ id, best, count });
  });
  hits.sort((a, b) => b.best - a.best || b.count - a.count || d.features.max[b.id] - d.features.max[a.id]);
  const panel = el("div", { class: "panel", id: "search-results" },
    el("h3", {}, `Search "${query}": ${hits.length} feature${hits.length === 1 ? "" : "s"} by common token`));
  if (!hits.length) panel.append(el("p", { class: "muted" }, "No feature has this among its common tokens."));
  const list = el("div", {});
  for (const h of hits.slice(0, 200)) {
    const toks = d.features.tokens[h.id].map(([t, c]) => `${chipToken(t)} \u00d7${c}`).join("  ");
    list.append(el("div", { class: "hit" }, featureLink(h.id), " ", el("span", { class: "chip" }, toks)));
  }
  panel.append(list);
  app.append(panel);
  const textPanel = el("div", { class: "panel", id: "text-results" }, el("h3", {}, "Context text"),
    el("p", { class: "muted" }, "Searching the top contexts of every feature ..."));
  app.append(textPanel);
  if (q) loadAllText(() => { if (route().search === query) renderTextHits(textPanel, query, q); });
}

function renderTextHits(panel, query, q) {
  const d = GT.data, hits = [];
  for (let p = 0; p < d.parts; p++) searchTexts(p).forEach((texts, j) => {
    let n = 0, first = null;
    for (const t of texts) {
      const at = t.toLowerCase().indexOf(q);
      if (at >= 0) { n++; if (first === null) first = [t, at]; }
    }
    if (n) hits.push({ id: p * d.part_size + j, n, of: texts.length, first });
  });
  hits.sort((a, b) => b.n - a.n || d.features.max[b.id] - d.features.max[a.id]);
  panel.replaceChildren(el("h3", {}, `Context text "${query}": ${hits.length} feature${hits.length === 1 ? "" : "s"}`),
    el("p", { class: "legend" }, `Searched: the text of each feature's top ${Math.min(d.search_examples, d.top_k || d.search_examples)} `
      + `contexts (of the ${d.top_k} kept per feature); a hit counts the contexts that contain the text.`));
  if (!hits.length) panel.append(el("p", { class: "muted" }, "No top context contains this text."));
  for (const h of hits.slice(0, 200)) {
    const [t, at] = h.first, from = Math.max(0, at - 40), to = Math.min(t.length, at + q.length + 40);
    const snippet = el("span", { class: "ctx" }, (from > 0 ? "\u2026" : "") + showToken(t.slice(from, at)),
      el("mark", {}, showToken(t.slice(at, at + q.length))), showToken(t.slice(at + q.length, to)) + (to < t.length ? "\u2026" : ""));
    panel.append(el("div", { class: "hit" }, featureLink(h.id), el("span", { class: "muted" }, ` in ${h.n} of its top ${h.of} contexts: `), snippet));
  }
}

// One example: the activation on every token as shading (value on hover), the peak token
// outlined, a marker where the packed sequence starts, EOS separators as document boundaries.
function exampleRow(ex, scale) {
  const [act, pos, tokens, k, row, acts, docStart, eos] = ex;
  const ctx = el("span", { class: "ctx" });
  if (docStart) ctx.append(el("span", { class: "bound", title: "start of a packed sequence (position 0)" }, "\u25b6 start"));
  else ctx.append(el("span", { class: "cut", title: "the context continues before this" }, "\u2026"));
  const eosAt = new Set(eos || []);
  tokens.forEach((t, i) => {
    const a = acts ? acts[i] : (i === k ? act : 0);
    const cls = ["tok"];
    if (i === k) cls.push("peak");
    if (eosAt.has(i)) cls.push("eos");
    if (a === null) cls.push("skipped");
    const what = a === null ? "not encoded (a skipped row: position 0, a skipped position or a norm outlier)" : `activation ${fmt(a)}`;
    const span = el("span", { class: cls.join(" "), title: `pos ${pos - k + i}${eosAt.has(i) ? " \u00b7 end of document (EOS)" : ""} \u00b7 ${what}` },
      showToken(t));
    if (a > 0) span.style.background = `rgba(255, 140, 0, ${Math.min(1, 0.12 + 0.88 * a / scale).toFixed(3)})`;
    ctx.append(span);
  });
  return el("div", { class: "example", title: `store row ${row}` }, el("span", { class: "act" }, fmt(act)),
    el("span", { class: "pos" }, `pos ${pos}`), ctx);
}

// The tokens the decoder direction promotes and suppresses through the final norm and the unembedding
// (its direct path only), flagged when no more peaked than random directions; without --model, how to get it.
function logitPanel(logits) {
  const panel = el("div", { class: "panel", id: "logits" }, el("h3", {}, "Direct effect through the unembedding"));
  if (!logits) {
    panel.append(el("p", { class: "muted", id: "logits-missing" }, "Not computed for this browser. Rerun `ghosttrack interpret` with "
      + "--model <the model's folder or .gguf file> to list the tokens this feature's decoder direction promotes and suppresses."));
    return panel;
  }
  panel.append(el("p", { class: "legend" }, "The change in the final logits when the decoder direction is added to the last layer's output "
    + "(through the final norm's scale and the unembedding; effects through later layers are not included). "
    + `Kurtosis of these logits over the vocabulary: ${fmt(logits.kurtosis, 3)} (random directions: up to ${fmt(logits.noise_kurtosis, 3)}).`));
  if (logits.noise_like) panel.append(el("p", { class: "hint", id: "logits-noise" }, "Noise-like: these logits are no more peaked than "
    + "those of a random direction, so the lists below are mostly arbitrary tokens; read this feature from its examples."));
  const side = (name, list, cls) => {
    const col = el("div", {}, el("h4", {}, name));
    for (const [t, v] of list) col.append(el("span", { class: "chip " + cls, title: `logit ${v > 0 ? "+" : ""}${fmt(v)}` }, `${chipToken(t)} ${v > 0 ? "+" : ""}${fmt(v, 3)}`));
    return col;
  };
  panel.append(el("div", { class: "cols" }, side("Promoted tokens", logits.promoted, "up"), side("Suppressed tokens", logits.suppressed, "down")));
  return panel;
}

function renderFeature(app, id) {
  const d = GT.data, f = d.features;
  if (!(id >= 0 && id < d.d_sae)) { app.append(el("p", { class: "error" }, `There is no feature ${id}: this SAE has features 0-${d.d_sae - 1}.`)); return; }
  const nav = el("div", { class: "pager" });
  if (id > 0) nav.append(el("a", { class: "btn", href: `#feature=${id - 1}` }, "\u2190 #" + (id - 1)));
  nav.append(el("a", { class: "btn", href: "#" }, "overview"));
  if (id + 1 < d.d_sae) nav.append(el("a", { class: "btn", href: `#feature=${id + 1}` }, "#" + (id + 1) + " \u2192"));
  app.append(nav, el("h2", { id: "feature-title" }, `Feature ${id}` + (f.count[id] ? "" : " (dead)")));
  app.append(el("div", { class: "cards" }, card(pct(f.density[id]), "density"), card(f.count[id].toLocaleString(), "activations"),
    card(fmt(f.max[id]), "max activation"), card(fmt(f.mean[id]), "mean activation")));
  const body = el("div", { id: "feature-view" }, el("p", { class: "muted" }, "Loading examples ..."));
  app.append(body);
  const part = Math.floor(id / d.part_size);
  loadPart(part, () => {
    if (route().feature !== String(id)) return;  // the user moved on while the file loaded
    const rec = unpackFeature(GT.parts[part], GT.parts[part].features[id - part * d.part_size]);
    body.replaceChildren();
    const common = el("div", { class: "panel", id: "common-tokens" }, el("h3", {}, "Common tokens (activating token of the top examples)"));
    for (const [t, c] of rec.common) common.append(el("span", { class: "chip" }, `${chipToken(t)} \u00d7${c}`));
    if (!rec.common.length) common.append(el("span", { class: "muted" }, "none"));
    const h = rec.hist, bars = [];
    for (let i = 0; i < h.counts.length; i++) {
      const lo = Math.max(h.bin_edges[i], 1e-12);
      bars.push({ x0: Math.log10(lo), x1: Math.log10(Math.max(h.bin_edges[i + 1], lo * 1.0001)), count: h.counts[i],
                  label: `${fmt(h.bin_edges[i])} .. ${fmt(h.bin_edges[i + 1])}` });
    }
    if (bars.length && h.bin_edges[0] === 0) bars[0].x0 = bars[0].x1 - 0.1;  // the under-range bin [0, first edge)
    const hist = el("div", { class: "panel", id: "activation-histogram" }, el("h3", {}, "Activation histogram (nonzero activations)"),
      barChart(bars, { name: "activation (log scale)", tick: x => fmt(Math.pow(10, x), 2) }));
    const top = Math.max(f.max[id], 1e-12);
    const ex = el("div", { class: "panel", id: "examples" }, el("h3", {}, `Top ${rec.examples.length} examples`),
      el("p", { class: "legend" }, `Shading: the feature's activation on each token, relative to its max ${fmt(top)} (hover a token for its value); `
        + "outlined: the example's token; \u25b6 start: the sequence starts here; a bar before a token: end of a document (EOS); hatched: a row the pass skipped."));
    for (const e of rec.examples) ex.append(exampleRow(e, top));
    if (!rec.examples.length) ex.append(el("p", { class: "muted" }, "This feature never fired on the scanned rows."));
    body.append(common);
    body.append(logitPanel(rec.logits));
    body.append(hist, ex);
    if (rec.quantiles && rec.quantiles.length) {
      const nb = rec.quantiles.length;
      const qp = el("div", { class: "panel", id: "quantiles" }, el("h3", {}, "Examples across the activation distribution"),
        el("p", { class: "legend" }, `Each band holds ${pct(1 / nb)} of the feature's activations; its examples are drawn at random from the band.`));
      for (let b = nb - 1; b >= 0; b--) {
        const [lo, hi, exs] = rec.quantiles[b];
        const band = el("div", { class: "band", id: `band-${b}` },
          el("h4", {}, `Quantile ${Math.round(100 * b / nb)}\u2013${Math.round(100 * (b + 1) / nb)}% \u00b7 activation ${fmt(lo)} \u2013 ${fmt(hi)}`));
        for (const e of exs) band.append(exampleRow(e, top));
        if (!exs.length) band.append(el("p", { class: "muted" }, "No sampled activation fell in this band."));
        qp.append(band);
      }
      body.append(qp);
    }
    if (rec.neighbors && rec.neighbors.length) {
      const nbp = el("div", { class: "panel", id: "neighbors" }, el("h3", {}, "Nearest features (cosine of decoder directions)"));
      for (const [other, c] of rec.neighbors) {
        const toks = f.tokens[other].slice(0, 3).map(([t]) => chipToken(t)).join(" ");
        nbp.append(el("span", { class: "chip" }, featureLink(other), ` ${c.toFixed(3)}` + (toks ? ` \u00b7 ${toks}` : "")));
      }
      body.append(nbp);
    }
  });
}

function fail(message) {
  const app = document.getElementById("app");
  app.replaceChildren(el("p", { class: "error", id: "error" }, message));
}

function render() {
  if (!GT.data) return fail("browser_data/overview.js did not load; keep the browser_data folder next to index.html.");
  const app = document.getElementById("app"), params = route();
  app.replaceChildren();
  if (params.search !== undefined && /^\s*\d+\s*$/.test(params.search)) {
    location.replace("#feature=" + parseInt(params.search, 10));  // a feature id: straight to its page
    return;
  }
  if (params.feature !== undefined) renderFeature(app, parseInt(params.feature, 10));
  else renderOverview(app, params);
  window.scrollTo(0, 0);
}

document.getElementById("search-form").addEventListener("submit", ev => {
  ev.preventDefault();
  location.hash = "search=" + encodeURIComponent(document.getElementById("search-input").value);
});
window.addEventListener("hashchange", render);
