"""The tracks outputs: tracks.json, the per-token Parquet, and the HTML view in headless Chromium."""
import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ghosttrack.errors import GhostTrackError
from ghosttrack.tracks.reference import track_reference
from ghosttrack.tracks.stats import token_statistics
from ghosttrack.interpret.browser import DATA_DIR, _js_call
from ghosttrack.tracks.tracker import HypothesisTracker
from ghosttrack.tracks.view import browser_links, latent_labels, write_outputs
from tracks_helpers import ACTIVE, EDGES, LAYERS, edge_table

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    interp = root / "interp"
    for layer in (3, 5):  # layer 9 has no browser: its latents are shown without links
        (interp / f"layer_{layer}").mkdir(parents=True)
        (interp / f"layer_{layer}" / "index.html").write_text("<html></html>")
        (interp / f"layer_{layer}" / DATA_DIR).mkdir()
        tokens = [[[f" L{layer}f{f}", 5], [" and", 2], ["\n", 1], [" four", 1]] for f in range(6)]
        tokens[1] = [[EVIL, 3]]
        (interp / f"layer_{layer}" / DATA_DIR / "overview.js").write_text(
            _js_call("GT.overview", {"d_sae": 6, "features": {"tokens": tokens}}))
    result = track_reference(LAYERS, ACTIVE, EDGES, min_score=0.3)
    tracker = HypothesisTracker(LAYERS, {k: edge_table(v) for k, v in EDGES.items()}, {3: 6, 5: 6, 9: 6}, min_score=0.3)
    out = root / "T"
    links = browser_links(interp, LAYERS, out)
    page = write_outputs(out, result, [11, 12], [" The", EVIL], meta={"model": "runs/tiny <script> & model"}, links=links,
                         labels=latent_labels(interp, LAYERS), edge_score=tracker.edge_score)
    return page, result, links


def test_files(written):
    page, result, links = written
    out = page.parent
    assert links == {3: "../interp/layer_3/index.html", 5: "../interp/layer_5/index.html", 9: None}
    saved = json.loads((out / "tracks.json").read_text())
    assert saved["layers"] == LAYERS and saved["n_tracks"] == result.n_tracks == len(saved["tracks"])
    assert saved["tracks"][4]["split_from"] == 0 and saved["tracks"][1]["merged_into"] == 4
    table = pq.read_table(out / "token_stats.parquet").to_pydict()
    assert table["piece"] == [" The", EVIL] and table["token_id"] == [11, 12]
    assert table["alive_layer5"] == [4.0, 0.0]
    assert table["dominant_share"] == pytest.approx(token_statistics(result)["dominant_share"].tolist())
    data = (out / "tracks_data.js").read_text()
    assert "</" not in data and "tiny &lt;script&gt; &amp; model" in page.read_text()
    payload = json.loads(data[len("GT.tracks("):-3])
    # Labels: the first LABEL_TOKENS common tokens of each drawn latent, none for layer 9 (no browser).
    assert payload["labels"][0]["0"] == [" L3f0", " and", "\n"] and payload["labels"][1]["1"] == [EVIL]
    assert payload["labels"][2] == {}
    # Each step of a flow carries its matched edge's score: track 0 is 0@3 -> 0@5 -> 0@9.
    track0 = next(t for t in payload["tokens"][0]["tracks"] if t["id"] == 0)
    assert [c[:2] for c in track0["chain"]] == [[3, 0], [5, 0], [9, 0]] and track0["scores"] == pytest.approx([0.9, 0.7])


def test_edge_score_lookup():
    tracker = HypothesisTracker(LAYERS, {k: edge_table(v) for k, v in EDGES.items()}, {3: 6, 5: 6, 9: 6}, min_score=0.3)
    for (i, j), triples in EDGES.items():
        k = LAYERS.index(j)
        for src, dst, score in triples:
            want = score if score >= 0.3 else None
            assert tracker.edge_score(k, src, dst) == (pytest.approx(want) if want is not None else None)
    assert tracker.edge_score(1, 0, 3) is None and tracker.edge_score(2, 5, 5) is None


def test_bad_interp_folder(tmp_path):
    with pytest.raises(GhostTrackError, match="no feature browser"):
        browser_links(tmp_path, LAYERS, tmp_path / "T")


def chromium_dom(tmp_path: Path, url: str) -> str:
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium (/usr/bin/chromium) is not installed; apt-get install chromium")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_view_in_chromium(written, tmp_path):
    page, result, _ = written
    dom = chromium_dom(tmp_path, page.as_uri() + "#token=0")
    assert "<title>pwned" not in dom and "&lt;img src=x" in dom  # the token is text, never markup
    assert len(re.findall(r'class="col"', dom)) == 3 and "layer 9" in dom
    # Token 0's tracks 0 (3 layers), 1 (2), 4 (2): 2 + 1 + 1 flows; T2 and T5 live one layer each.
    assert len(re.findall(r'<path class="flow"', dom)) == 4
    assert len(re.findall(r'<path class="split"', dom)) == 1  # track 4 split off track 0
    assert len(re.findall(r'<path class="merge"', dom)) == 2  # 1 into 4, 2 into 1
    assert 'href="../interp/layer_5/index.html#feature=3"' in dom
    assert '<text class="toks"' in dom and "␣L5f3 · ␣and · ↵" in dom  # labels, spaces and newlines visible
    assert "layer 3 #0 → layer 5 #0: match score 0.9 · activation 1.5" in dom  # edge hover
    assert "layer_9" not in dom  # no browser for layer 9: no link
    assert re.search(r'id="stat-tracks".*?>5<', dom, re.S)
    other = chromium_dom(tmp_path, page.as_uri() + "#token=1")
    assert re.search(r'id="stat-tracks".*?>2<', other, re.S) and "dies at layer 5" in other
