"""The static feature browser: data files, escaping, and the page itself in headless Chromium
(per-token shading, boundaries, quantile bands, nearest features, logit lists, text search)."""
import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ghosttrack.interpret.browser import PART_SIZE, SEARCH_EXAMPLES, write_browser
from ghosttrack.interpret.pack import dequantise, read_varints, untrimmed_codes
from ghosttrack.interpret.features import density_histogram

CHROMIUM = Path("/usr/bin/chromium")
N_FEATURES = PART_SIZE + 44  # two data files, the second one partial
EVIL = "<img src=x onerror=\"document.title='pwned'\">"
EOS = "<|endoftext|>"


def fake_records(n: int) -> list[dict]:
    """Feature records as FeatureInterpreter writes them: feature f's examples activate on token 'tok{f}'."""
    rng = np.random.default_rng(0)
    records = []
    for f in range(n):
        dead = f % 7 == 3
        acts = [] if dead else sorted(rng.uniform(0.5, 5.0, 4).tolist(), reverse=True)
        token = EVIL if f == 5 else f" tok{f}"
        examples = [{"text": f"before {i} {token} after", "position": 3 + i, "activation": a, "token": token,
                     "tokens": ["before", f" {i}", token, EOS if i == 1 else " after"], "token_index": 2,
                     "row": 100 * f + 10 * i + 5, "acts": [None, round(a / 4, 4), a, 0.0], "doc_start": i == 0,
                     "eos": [3] if i == 1 else []}
                    for i, a in enumerate(acts)]
        quantiles = [] if dead else [{"band": b, "lo": b / 5, "hi": (b + 1) / 5, "examples": [
            {**examples[0], "activation": (b + 0.5) / 5, "text": f"band {b} of {f}", "row": 10**6 + 100 * f + 10 * b}]} for b in range(5)]
        records.append({
            "feature_id": f, "active": not dead, "num_activations": 0 if dead else 40 + f,
            "top_activation": acts[0] if acts else 0.0, "mean_activation": float(np.mean(acts)) if acts else 0.0,
            "density": 0.0 if dead else (0.5 if f == 1 else (40 + f) / 10_000),
            "common_tokens": [] if dead else [[token, len(acts)], [" and", 1]],
            "top_examples": examples,
            "histogram": {"bin_edges": [] if dead else [0.4, 1.0, 2.0, 6.0], "counts": [] if dead else [10, 20, 10 + f]},
            "quantiles": quantiles,
            "neighbors": [[(f + 1) % n, 0.5], [(f + 2) % n, 0.25]],
        })
    return records


def fake_summary(records: list[dict]) -> dict:
    density = np.array([r["density"] for r in records])
    dead = [r["feature_id"] for r in records if not r["active"]]
    dense = [{"feature_id": r["feature_id"], "density": r["density"]} for r in records if r["density"] > 0.1]
    n = len(records)
    return {"layer": 6, "model": "tiny <script>alert(1) & co", "hook": "resid_post", "store": "runs/s", "sae_path": "runs/sae",
            "d_in": 32, "d_sae": n, "rows_scanned": 10_000, "rows_skipped_flagged": 80, "rows_skipped_outliers": 3,
            "dead": {"count": len(dead), "fraction": len(dead) / n, "features": dead},
            "dense": {"count": len(dense), "fraction": len(dense) / n, "threshold": 0.1, "features": dense},
            "density_histogram": density_histogram(density[density > 0], 10_000),
            "peak_rows": [{"row": 4242, "features": 12, "share": 0.05, "top_by_max": 9, "feature_ids": [2, 4, 6],
                           "position": 1, "text": "sink here", "tokens": [" sink", " here"], "token_index": 0}],
            "peak_positions": [{"position": 1, "scope": "top_by_max", "features": 9, "of": 50, "share": 0.18,
                                "expected_share": 0.01}],
            "peak_hint": "1 row(s) are each the top example of many features; pass --skip-positions 1"}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    records = fake_records(N_FEATURES)
    directory = tmp_path_factory.mktemp("browser")
    index = write_browser(directory, records, fake_summary(records))
    return index, records


def _js_payload(path: Path, call: str):
    text = path.read_text(encoding="utf-8")
    assert text.startswith(call + "(") and text.endswith(");\n")
    return json.loads("[" + text[len(call) + 1:-3].replace("<\\/", "</") + "]")


def unpack(part: dict, table: dict, rec: dict, ex: list) -> dict:
    """A packed example back to the record's fields, as the page's unpackExample reads it."""
    act, pos, offset, codes = ex[:4]
    length, k, doc_start = ex[4:] if len(ex) > 4 else (*part["window"], 0)
    ids = read_varints(base64.b64decode(part["tokens"]))
    rows, end = [], 0
    for gap, n in zip(part["spans"][::2], part["spans"][1::2]):
        rows += [-1] * n if gap < 0 else list(range(end + gap, end + gap + n))
        end = end if gap < 0 else end + gap + n
    acts = None if codes is None else dequantise(untrimmed_codes(base64.b64decode(codes), length), rec["scale"])
    return {"activation": act, "position": pos, "token_index": k, "doc_start": bool(doc_start),
            "tokens": [table["pieces"][i] for i in ids[offset:offset + length]], "row": int(rows[offset + k]),
            "acts": acts, "eos": [i for i, t in enumerate(ids[offset:offset + length]) if t in table["eos"]]}


def test_data_files(page):
    index, records = page
    data = index.parent / "browser_data"
    assert sorted(p.name for p in data.iterdir()) == ["features_0000.js", "features_0001.js", "overview.js",
                                                      "text_0000.js", "text_0001.js", "tokens.js"]
    (overview,) = _js_payload(data / "overview.js", "GT.overview")
    assert overview["d_sae"] == N_FEATURES and len(overview["features"]["density"]) == N_FEATURES
    assert overview["top_k"] == 4 and overview["search_examples"] == SEARCH_EXAMPLES
    (table,) = _js_payload(data / "tokens.js", "GT.tokens")
    assert len(set(table["pieces"])) == len(table["pieces"]) and EVIL in table["pieces"]
    for name in ("features_0000.js", "features_0001.js"):
        index_, part = _js_payload(data / name, "GT.part")
        for rec in part["features"]:
            want = records[rec["id"]]
            shown = [(ex, w) for ex, w in zip(rec["examples"], want["top_examples"])]
            shown += [(ex, w) for (_, _, exs), q in zip(rec["quantiles"], want["quantiles"])
                      for ex, w in zip(exs, q["examples"])]
            assert len(shown) == len(want["top_examples"]) + sum(len(q["examples"]) for q in want["quantiles"])
            for ex, w in shown:
                got = unpack(part, table, rec, ex)
                for key in ("position", "token_index", "doc_start", "tokens", "row", "eos"):
                    assert got[key] == w[key], key
                assert got["activation"] == float(f"{w['activation']:.4g}")
                wanted = np.array([np.nan if v is None else v for v in w["acts"]])
                np.testing.assert_array_equal(np.isnan(got["acts"]), np.isnan(wanted))
                # uint8 with a per-feature scale: within half a step (scale / 508) of the value.
                assert np.nanmax(np.abs(got["acts"] - wanted)) <= rec["scale"] / 508 + 1e-12
            assert [table["pieces"][t] for t, _ in rec["common"]] == [t for t, _ in want["common_tokens"]]
    part_index, part = _js_payload(data / "features_0001.js", "GT.part")
    assert part_index == 1 and [f["id"] for f in part["features"]] == list(range(PART_SIZE, N_FEATURES))
    part_index, texts = _js_payload(data / "text_0001.js", "GT.text")
    ids, flat = read_varints(base64.b64decode(texts["tokens"])), texts["features"][0]
    assert part_index == 1 and ["".join(table["pieces"][i] for i in ids[o:o + n]) for o, n in zip(flat[::2], flat[1::2])] == [
        "".join(ex["tokens"]) for ex in records[PART_SIZE]["top_examples"]]
    # "</" is escaped in the data files, and the title is HTML-escaped in the page.
    assert "</" not in (data / "features_0000.js").read_text() and "</" not in (data / "overview.js").read_text()
    assert "</" not in (data / "tokens.js").read_text()
    assert "tiny &lt;script&gt;alert(1) &amp; co" in index.read_text()


def test_rewrite_replaces_data(page, tmp_path):
    index, records = page
    shutil.copytree(index.parent, tmp_path / "copy")
    write_browser(tmp_path / "copy", records[:10], fake_summary(records[:10]))
    assert sorted(p.name for p in (tmp_path / "copy" / "browser_data").iterdir()) == ["features_0000.js", "overview.js",
                                                                                     "text_0000.js", "tokens.js"]
    with pytest.raises(ValueError, match="ordered by feature id"):
        write_browser(tmp_path / "bad", records[1:5], fake_summary(records[1:5]))


def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium (/usr/bin/chromium) is not installed; apt-get install chromium")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def by_id(dom: str, element_id: str) -> str:
    """The text of the element with this id and everything after it up to the next panel (good enough here)."""
    match = re.search(rf'id="{element_id}"(.*?)(?=<div class="panel[ "]|</main>)', dom, re.S)
    assert match, f"no element #{element_id} in the page"
    return match.group(1)


@pytest.mark.slow
def test_page_in_chromium(page, tmp_path):
    index, records = page
    url = index.as_uri()
    overview = chromium(tmp_path, url, "--dump-dom")
    dead = sum(not r["active"] for r in records)
    assert f"Layer 6: {N_FEATURES} features" in overview
    assert f"{dead} (" in by_id(overview, "stat-dead") and "rows scanned" in overview
    assert "<rect" in by_id(overview, "density-histogram")
    assert 'href="#feature=1"' in by_id(overview, "dense-list")
    peaks = by_id(overview, "peak-rows")
    assert "--skip-positions 1" in peaks and "4242" in peaks and 'href="#feature=6"' in peaks
    assert "9 of the 50 strongest" in peaks and "the top example of 9 of the 50 strongest features" in peaks
    # A feature page (in the second data file) shows its contexts with the token highlighted.
    f = PART_SIZE + 7
    view = chromium(tmp_path, url + f"#feature={f}", "--dump-dom")
    examples = by_id(view, "examples")
    assert examples.count('class="example"') == len(records[f]["top_examples"])
    assert f"tok{f}</span>" in examples and "before" in examples
    # Every token is shaded by its activation (value on hover); the skipped row is hatched;
    # the sequence start and the EOS separator are marked.
    act0 = records[f]["top_examples"][0]["activation"]
    assert re.search(r'class="tok peak"[^>]*title="pos 3 · activation ' + f"{act0:.4g}", examples)
    assert examples.count('class="tok"') >= len(records[f]["top_examples"])
    assert "background: rgba(255, 140, 0" in examples and 'class="tok skipped"' in examples
    assert examples.count('class="bound"') == 1 and 'class="tok eos"' in examples
    assert "<rect" in by_id(view, "activation-histogram")
    bands = by_id(view, "quantiles")
    assert all(f'id="band-{b}"' in bands for b in range(5)) and "Quantile 80–100%" in bands
    assert bands.count('class="example"') == 5 and ">0.7</span>" in bands  # band 3's example, activation 0.7
    assert "pass --model" not in view and "--model &lt;the model" in by_id(view, "logits")  # no model given
    assert f'href="#feature={f + 1}"' in by_id(view, "neighbors")
    # Search by token finds the feature; search by id opens its page.
    hits = by_id(chromium(tmp_path, url + "#search=tok42", "--dump-dom"), "search-results")
    assert 'href="#feature=42"' in hits and 'href="#feature=43"' not in hits
    # Search over the context text: "tok18 after" is only in feature 18's contexts (not 180's).
    text_hits = by_id(chromium(tmp_path, url + "#search=TOK18%20after", "--dump-dom"), "text-results")
    assert 'href="#feature=18"' in text_hits and "<mark>tok18 after</mark>" in text_hits
    assert text_hits.count('href="#feature=') == 1
    # The count says what it counts: of the feature's contexts searched (its top 4 here, not 10).
    assert "in 3 of its top 4 contexts" in text_hits and "top 4 contexts (of the 4 kept per feature)" in text_hits
    assert "<h2 id=\"feature-title\">Feature 18</h2>" in chromium(tmp_path, url + "#search=18", "--dump-dom")
    # A token made of markup stays text.
    evil = chromium(tmp_path, url + "#feature=5", "--dump-dom")
    assert "&lt;img src=x" in evil and "<img" not in evil and "<title>pwned" not in evil
    # A screenshot renders (look at it when changing the page: tmp_path / "feature.png").
    chromium(tmp_path, url + f"#feature={f}", f"--screenshot={tmp_path / 'feature.png'}", "--window-size=1200,900")
    assert (tmp_path / "feature.png").stat().st_size > 10_000


@pytest.mark.slow
def test_real_pipeline_page_with_logits(tiny_gpt2_dir, corpus_file, tmp_path):
    """extract -> SAE -> interpret --model on the tiny GPT-2: the page lists promoted/suppressed tokens."""
    from click.testing import CliRunner

    from ghosttrack.cli import main
    from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig

    store = tmp_path / "store"
    done = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", "2", "--tokens", "1024", "--seq-len", "32", "--batch-size", "8",
        "--chunk-tokens", "256", "--device", "cpu", "--out", str(store)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    torch.manual_seed(0)
    SparseAutoencoder(TopKSAEConfig(d_in=32, d_sae=40, k=4), {"hook_layer": 2, "hook_name": "blocks.2.hook_resid_post",
                                                               "model_name": "tiny"}).save(tmp_path / "sae")
    done = CliRunner().invoke(main, ["interpret", "--store", str(store), "--sae", str(tmp_path / "sae"), "--top-k", "3",
                                     "--model", str(tiny_gpt2_dir), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output
    layer_dir = tmp_path / "o" / "layer_2"
    records = json.loads((layer_dir / "features.json").read_text())
    rec = max(records, key=lambda r: r["num_activations"])
    assert len(rec["logits"]["promoted"]) == len(rec["logits"]["suppressed"]) == 10
    view = chromium(tmp_path, (layer_dir / "index.html").as_uri() + f"#feature={rec['feature_id']}", "--dump-dom")
    logits = by_id(view, "logits")
    assert "Direct effect through the unembedding" in logits and "Kurtosis of these logits" in logits
    assert ('id="logits-noise"' in logits) == rec["logits"]["noise_like"]
    assert "Promoted tokens" in logits and "Suppressed tokens" in logits
    assert logits.count('class="chip up"') == logits.count('class="chip down"') == 10
    assert "background: rgba(255, 140, 0" in by_id(view, "examples") and 'id="band-0"' in view


@pytest.mark.slow
def test_sorting_and_search_at_24k_features(tmp_path):
    """24,576 features (96 data files): the overview loads only overview.js, sorts every column,
    pages through the sorted order, and the text search reads all 96 text files."""
    n = 96 * PART_SIZE
    rng = np.random.default_rng(1)
    maxes = rng.lognormal(1.0, 1.0, n)
    records = [{"feature_id": f, "active": True, "num_activations": int(10 + f % 97), "top_activation": float(maxes[f]),
                "mean_activation": float(maxes[f] / 2), "density": (10 + f % 97) / 1e5,
                "common_tokens": [[f" w{f}", 1]],
                "top_examples": [{"text": f"ctx of feature {f} end", "position": 1, "activation": float(maxes[f]),
                                  "tokens": ["ctx", " of", " feature", f" {f}", " end"], "token_index": 3}]}
               for f in range(n)]
    index = write_browser(tmp_path / "big", records, fake_summary(records))
    assert len(list((tmp_path / "big" / "browser_data").glob("text_*.js"))) == 96
    page = 7
    view = chromium(tmp_path, index.as_uri() + f"#sort=max&page={page}", "--dump-dom")
    table = by_id(view, "feature-table")
    shown = [int(x) for x in re.findall(r'href="#feature=(\d+)"', table)]
    want = np.argsort(-maxes, kind="stable")[page * 50:(page + 1) * 50].tolist()
    assert shown == want and f"page {page + 1} of {n // 50 + 1}" in table
    by_count = [int(x) for x in re.findall(r'href="#feature=(\d+)"', by_id(chromium(
        tmp_path, index.as_uri() + "#sort=count&page=0", "--dump-dom"), "feature-table"))]
    assert [records[f]["num_activations"] for f in by_count] == [106] * 50
    hits = by_id(chromium(tmp_path, index.as_uri() + "#search=feature%2024000%20end", "--dump-dom"), "text-results")
    assert re.findall(r'href="#feature=(\d+)"', hits) == ["24000"]
