"""`ghosttrack detect` end to end on the tiny random GPT-2 with tiny SAEs, and its one-line input errors."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    from ghosttrack.sae import SparseAutoencoder, TopKSAEConfig

    root = tmp_path_factory.mktemp("saes")
    torch.manual_seed(2)
    for layer in (1, 2):
        sae = SparseAutoencoder(TopKSAEConfig(d_in=32, d_sae=48, k=5))
        sae.save(root / f"layer_{layer}", {"hook_layer": layer, "hook_name": f"blocks.{layer}.hook_resid_post",
                                           "model_name": "tiny"})
    return root


def _qa_file(path, n_questions: int, seed: int, answers: int = 2):
    from conftest import WORDS

    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_questions):
        question = " ".join(rng.choice(WORDS, 5)) + f" {q}?"
        for a in range(answers):
            rows.append({"question": question, "answer": " ".join(rng.choice(WORDS, rng.integers(1, 6))),
                         "label": (q + a) % 2})
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="module")
def matches_dir(sae_dir, tmp_path_factory):
    """Random edges layer 1 -> 2, written the way `ghosttrack match` writes them."""
    from ghosttrack.tracks.edges import edge_file, write_edges

    out = tmp_path_factory.mktemp("matches")
    rng = np.random.default_rng(0)
    src = np.repeat(np.arange(48), 3)
    write_edges(edge_file(out, 1, 2), {"src": src, "dst": rng.integers(0, 48, len(src)),
                                       "score": rng.uniform(0.5, 1, len(src)).astype(np.float32)}, {})
    return out


def _run(*args):
    return CliRunner().invoke(main, ["detect", *map(str, args)])


def test_detect_end_to_end_with_transfer_and_cache(tmp_path, tiny_gpt2_dir, sae_dir, matches_dir, monkeypatch):
    data, other = _qa_file(tmp_path / "a.jsonl", 16, 0), _qa_file(tmp_path / "b.jsonl", 12, 1)
    args = ["--data", data, "--test-data", other, "--model", tiny_gpt2_dir, "--sae", sae_dir, "--matches", matches_dir,
            "--out",
            tmp_path / "out", "--folds", 3, "--inner-folds", 2, "--bootstrap", 30, "--probe-layers", "0,2",
            "--compare-seeds", 2]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    names = [m["name"] for m in results["methods"]]
    assert names == ["tracks", "tracks_bag", "resid_probe", "sae_probe", "logprob", "length", "answer_text",
                     "question_probe"]
    # The tiny test tokenizer has no distinct " Yes" / " No" tokens: P(True) is skipped, with the reason.
    assert [(s["name"], "same token" in s["reason"]) for s in results["skipped"]] == [("p_true", True)]
    assert results["data"]["rows"] == 32 and results["data"]["duplicates_dropped"] == 0
    assert [c["name"] for c in results["comparisons"]][:3] == [
        "resid+tracks vs resid", "resid+tracks vs resid+sae_bag", "null: resid+shuffled_tracks vs resid"]
    assert all(c["ci"][0] <= c["delta_auroc"] <= c["ci"][1] for c in results["comparisons"])
    oof = pd.read_parquet(tmp_path / "out" / "oof_scores.parquet")
    assert set(oof["method"]) >= set(names) | {"resid", "resid+tracks", "resid+sae_bag", "resid+shuffled_tracks"}
    assert (oof.groupby(["table", "method", "fold_seed"]).size() == 32).all()
    for method in results["methods"] + results["transfer"]["methods"]:
        lo, hi = method["auroc_ci"]
        assert 0 <= lo <= hi <= 1 and 0 <= method["auroc"] <= 1
    assert all(m["n_test"] == 32 and m["n_groups"] == 16 for m in results["methods"])
    assert all(m["n_test"] == 24 for m in results["transfer"]["methods"])
    assert results["split"]["kind"] == "group" and results["split"]["n_folds"] == 3
    assert results["features"]["probe_layers"] == [0, 2] and results["features"]["sae_layers"] == [1, 2]
    assert {c["candidate"].split()[1] for c in results["methods"][names.index("resid_probe")]["chosen"]} <= {"0", "2"}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| tracks |" in table and "| resid_probe |" in table and "transfer" in table
    assert len(list((tmp_path / "out" / "cache").iterdir())) == 2  # one entry per source

    # A second run reuses the cached forward passes: no model is run.
    import ghosttrack.detect.pipeline as pipeline

    monkeypatch.setattr(pipeline, "compute_features", lambda *a, **k: pytest.fail("the cache was not used"))
    again = _run(*args)
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out" / "results.json").read_text())["methods"] == results["methods"]


@pytest.mark.parametrize("rows, extra, message", [
    ([{"question": "q", "response": "a", "label": 1}], [], "lacks column(s) answer"),
    ([{"question": f"q{i}", "answer": "a", "label": 1} for i in range(10)], [], "only label 1"),
    ([{"question": f"q{i % 3}", "answer": f"a{i}", "label": i % 2} for i in range(12)], [], "fewer than --folds 5"),
    (None, ["--data", "sae-probes:nope"], "unknown built-in source"),
])
def test_bad_input_is_one_line_before_the_model_loads(tmp_path, rows, extra, message):
    path = tmp_path / "d.csv"
    if rows is not None:
        pd.DataFrame(rows).to_csv(path, index=False)
    # The model does not exist: the data error must come first.
    result = _run(*(extra or ["--data", path]), "--model", tmp_path / "no-model", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
