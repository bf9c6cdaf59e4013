"""Size and opening time of the feature browser at 4,608 and 24,576 features.

Records are synthetic, shaped as `ghosttrack interpret` writes them at the defaults: 20 top
examples and 15 quantile examples (5 bands x 3) per feature, windows of 12 + 1 + 4 tokens around
rows of a 10M-row store (so windows of different features rarely overlap: the worst case for
sharing), token pieces drawn Zipf-like from a 49,152-piece vocabulary, per-token activations
(the example's token, and each of the 2 tokens on either side with probability 0.3: ~10% of a
window's tokens fire over a span of ~2.5 tokens, as on the demo's SmolLM2 layer 15: 9.3% and
2.5), a 30-bin histogram, 10 neighbours and 10 + 10 logit tokens. Reported:
bytes of browser_data per feature (all files: overview, token table, feature files, search
texts) and the fixed part, the time to write them, and the time until the overview has rendered
in headless Chromium, median of --repeats:

  dom_ms     performance.now() when render() returns (HTML parsed, overview.js loaded and
             parsed, the table sorted and built), read from the page itself;
  wall_ms    the wall time of `chromium --headless --dump-dom` on the overview minus the same
             on an empty page (start-up and tear-down taken out).

    python bench/bench_browser.py              # 4,608 and 24,576 features
    python bench/bench_browser.py --quick      # 512 features, seconds
Results: bench/results/browser.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ghosttrack.interpret.browser import BrowserWriter

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOP_K, BANDS, PER_BAND, BEFORE, AFTER, VOCAB, STORE_ROWS = 20, 5, 3, 12, 4, 49_152, 10_000_000


def synthetic_records(n: int, seed: int = 0):
    """Feature records in `FeatureInterpreter.records`' schema, in blocks of 1024 (as analyze_sae streams them)."""
    rng = np.random.default_rng(seed)
    pieces = [f" w{i}" if i % 3 else f"p{i}" for i in range(VOCAB)]
    stream = (np.minimum(rng.zipf(1.3, STORE_ROWS), VOCAB) - 1).astype(np.uint16)  # the store's token ids
    width = BEFORE + AFTER + 1
    for start in range(0, n, 1024):
        block = []
        for f in range(start, min(start + 1024, n)):
            top = float(rng.lognormal(1.5, 0.7))
            rows = rng.integers(BEFORE, STORE_ROWS - AFTER, TOP_K + BANDS * PER_BAND)
            values = np.concatenate([np.sort(rng.uniform(0.5, 1.0, TOP_K))[::-1] * top,
                                     rng.uniform(0.0, 0.5, BANDS * PER_BAND) * top])
            n_ex = len(rows)
            near = np.abs(np.arange(width) - BEFORE) <= 2  # tokens next to the example's own fire now and then
            fires = near & (rng.random((n_ex, width)) < 0.3)
            acts = np.where(fires, rng.uniform(0, 1, (n_ex, width)) * values[:, None], 0.0)
            acts[:, BEFORE] = values
            digits = 10.0 ** (3 - np.floor(np.log10(np.where(acts > 0, acts, 1.0))))
            acts = (np.round(acts * digits) / digits).tolist()  # 4 significant digits, as the records hold
            examples = []
            for e, (row, value) in enumerate(zip(rows.tolist(), values.tolist())):
                toks = [pieces[i] for i in stream[row - BEFORE:row + AFTER + 1].tolist()]
                examples.append({"text": "".join(toks), "position": int(row % 128), "activation": value,
                                 "token": toks[BEFORE], "tokens": toks, "token_index": BEFORE, "row": row,
                                 "acts": acts[e], "doc_start": False, "eos": []})
            top_examples = examples[:TOP_K]
            edges = np.geomspace(top / 100, top, 31)
            block.append({
                "feature_id": f, "active": True, "num_activations": int(rng.integers(20, 5000)),
                "top_activation": top, "mean_activation": top / 3, "density": float(rng.uniform(1e-4, 1e-2)),
                "common_tokens": [[t["token"], 1] for t in top_examples[:10]],
                "top_examples": top_examples,
                "histogram": {"bin_edges": edges.tolist(), "counts": rng.integers(0, 500, 30).tolist()},
                "quantiles": [{"band": b, "lo": b / BANDS * top, "hi": (b + 1) / BANDS * top,
                               "examples": examples[TOP_K + b * PER_BAND:TOP_K + (b + 1) * PER_BAND]}
                              for b in range(BANDS)],
                "neighbors": [[int(x), round(float(c), 4)] for x, c in zip(rng.integers(0, n, 10), rng.random(10))],
                "logits": {"promoted": [[pieces[i], round(float(v), 4)] for i, v in zip(rng.integers(0, VOCAB, 10),
                                                                                          rng.random(10))],
                           "suppressed": [[pieces[i], -round(float(v), 4)] for i, v in zip(rng.integers(0, VOCAB, 10),
                                                                                             rng.random(10))],
                           "kurtosis": 12.3, "noise_kurtosis": 4.5, "noise_like": False},
            })
        yield block


def summary_of(n: int) -> dict:
    return {"layer": 6, "model": "synthetic", "hook": "resid_post", "store": "synthetic", "sae_path": "synthetic",
            "d_in": 768, "d_sae": n, "rows_scanned": STORE_ROWS, "rows_skipped_flagged": 0, "rows_skipped_outliers": 0,
            "rows_skipped_positions": 0, "skip_positions": [], "config": {"top_k": TOP_K},
            "dead": {"count": 0, "fraction": 0.0, "features": []},
            "dense": {"count": 0, "fraction": 0.0, "threshold": 0.1, "features": []},
            "density_histogram": {"log10_edges": [-4.0, -3.0, -2.0], "counts": [n // 2, n - n // 2]},
            "peak_rows": [], "peak_positions": [], "peak_hint": None}


def chromium(url: str, profile: Path) -> tuple[str, float]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout, (time.perf_counter() - start) * 1000


def open_times(index: Path, repeats: int, work: Path) -> dict:
    """Median dom_ms and wall_ms of the overview (see the module docstring)."""
    timed = index.with_name("bench_index.html")
    timed.write_text(index.read_text(encoding="utf-8").replace(
        "<script>render();</script>",
        "<script>render(); document.body.setAttribute('data-render-ms', performance.now().toFixed(1));</script>"),
        encoding="utf-8")
    empty = work / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body>empty</body></html>")
    dom, wall, base = [], [], []
    for r in range(repeats):
        out, ms = chromium(timed.as_uri(), work / f"profile{r}")
        if 'id="feature-table"' not in out:
            raise RuntimeError("the overview did not render")
        dom.append(float(out.split('data-render-ms="')[1].split('"')[0]))
        wall.append(ms)
        base.append(chromium(empty.as_uri(), work / f"profile_e{r}")[1])
    return {"dom_ms": statistics.median(dom), "wall_ms": statistics.median(wall) - statistics.median(base),
            "dom_ms_all": dom}


def run(n: int, repeats: int, work: Path) -> dict:
    directory = work / f"b{n}"
    start = time.perf_counter()
    writer = BrowserWriter(directory)
    for block in synthetic_records(n):
        writer.add(block)
    index = writer.finish(summary_of(n))
    write_s = time.perf_counter() - start  # includes making the synthetic records
    sizes = {p.name: p.stat().st_size for p in (directory / "browser_data").iterdir()}
    kinds = {kind: sum(v for k, v in sizes.items() if k.startswith(kind)) for kind in
             ("overview", "tokens", "features_", "text_")}
    total = sum(sizes.values())
    result = {"features": n, "total_bytes": total, "bytes_per_feature": total / n, "by_kind": kinds,
              "index_html_bytes": index.stat().st_size, "write_s_with_synthesis": write_s}
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        result.update(open_times(index, repeats, work))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="512 features only")
    p.add_argument("--sizes", default="4608,24576")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sizes = [512] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rows.append(run(n, args.repeats, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    # Fixed part and per-feature slope from the two sizes (bytes = fixed + per_feature * n).
    fit = None
    if len(rows) >= 2:
        (n0, b0), (n1, b1) = (rows[0]["features"], rows[0]["total_bytes"]), (rows[-1]["features"], rows[-1]["total_bytes"])
        slope = (b1 - b0) / (n1 - n0)
        fit = {"bytes_per_feature": slope, "fixed_bytes": b0 - slope * n0}
    meta = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_1min": os.getloadavg()[0], "python": sys.version.split()[0], "repeats": args.repeats,
            "chromium": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
            if Path(CHROMIUM).exists() else None}
    stem = "browser_quick" if args.quick else "browser"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "fit": fit}, indent=1) + "\n")
    lines = [f"# Feature browser size and opening time ({meta['machine']}, {meta['cores']} cores, "
             f"load {meta['load_1min']:.1f}, {meta['chromium']})", "",
             "| features | browser_data | per feature | overview | token table | feature files | search texts "
             "| render (median) | wall minus empty page |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["by_kind"]
        lines.append(f"| {r['features']:,} | {r['total_bytes'] / 1e6:.1f} MB | {r['bytes_per_feature']:,.0f} B "
                     f"| {k['overview'] / 1e6:.2f} MB | {k['tokens'] / 1e6:.2f} MB | {k['features_'] / 1e6:.1f} MB "
                     f"| {k['text_'] / 1e6:.1f} MB | {r.get('dom_ms', float('nan')):.0f} ms "
                     f"| {r.get('wall_ms', float('nan')):.0f} ms |")
    if fit:
        lines += ["", f"Linear fit over the sizes: {fit['bytes_per_feature']:,.0f} B per feature + "
                      f"{fit['fixed_bytes'] / 1e6:.2f} MB fixed."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
