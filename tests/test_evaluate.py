"""SAE evaluation on a tiny random GPT-2: exact identities, a plain-path oracle, the CLI, bad input."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.evaluate import EvalConfig, evaluate_sae, splice_mask
from ghosttrack.extract.hooks import replace_residual
from ghosttrack.extract.models import load_model
from ghosttrack.corpus.packing import pack_batches
from ghosttrack.sae import ReluSAEConfig, SparseAutoencoder

D = 32
LAYER = 1


@pytest.fixture(scope="module")
def loaded(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def batches(loaded, sample_texts):
    return list(pack_batches(sample_texts, loaded.tokenizer, 24, 3, max_sequences=7))  # odd: a partial last batch


def make_sae(kind: str) -> SparseAutoencoder:
    torch.manual_seed(0)
    d_sae = 2 * D if kind == "identity" else 40
    sae = SparseAutoencoder(ReluSAEConfig(d_in=D, d_sae=d_sae), {"hook_layer": LAYER, "model_name": "tiny",
                                                                  "hook_name": f"blocks.{LAYER}.hook_resid_post"})
    with torch.no_grad():
        if kind == "identity":  # relu(x) - relu(-x) = x: a perfect reconstruction
            eye = torch.eye(D)
            sae.W_enc.copy_(torch.cat([eye, -eye], 1))
            sae.W_dec.copy_(torch.cat([eye, -eye], 0))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        elif kind == "zero":  # reconstructs everything as 0: the same as zero-ablation
            sae.W_dec.zero_()
            sae.b_dec.zero_()
    return sae


def quiet(**kw):
    return EvalConfig(seq_len=24, batch_size=3, progress=False, **kw)


def test_identity_sae_recovers_everything(loaded, batches):
    r = evaluate_sae(make_sae("identity"), loaded, batches, layer=LAYER, config=quiet())
    assert r["tokens"] == 7 * 24 and r["predicted_tokens"] == 7 * 23
    assert r["mse"] < 1e-9 and r["fvu"] < 1e-9
    assert r["ce_spliced"] == pytest.approx(r["ce_clean"], abs=1e-5)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3) and abs(r["kl_clean_spliced"]) < 1e-6
    assert r["ce_zero_ablated"] > r["ce_clean"]
    assert r["l0"] == pytest.approx(D, abs=1)  # every dim is either > 0 or < 0


def test_zero_sae_recovers_nothing(loaded, batches):
    r = evaluate_sae(make_sae("zero"), loaded, batches, layer=LAYER, config=quiet())
    assert r["ce_spliced"] == pytest.approx(r["ce_zero_ablated"], abs=1e-6)
    assert r["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert r["fvu"] > 0.5


@pytest.mark.parametrize("splice_all", [False, True])
def test_matches_plain_computation(loaded, batches, splice_all):
    """CE and KL against HF's own loss and a splice that computes the SAE inside the hook."""
    sae = make_sae("random")
    r = evaluate_sae(sae, loaded, batches, layer=LAYER, config=quiet(splice_all=splice_all))
    model, ce, kl, n = loaded.model, {"clean": 0.0, "spliced": 0.0}, 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids = torch.as_tensor(batch, dtype=torch.long)
            out = model(input_ids=ids, labels=ids)
            m = ids.numel() - ids.shape[0]
            ce["clean"] += float(out.loss) * m

            def splice(h):
                mask = splice_mask(h, 3.0, splice_all)[..., None]
                return torch.where(mask, sae(h), h)

            with replace_residual(model, LAYER, "resid_post", splice):
                spliced = model(input_ids=ids, labels=ids)
            ce["spliced"] += float(spliced.loss) * m
            p = torch.log_softmax(out.logits[:, :-1], -1)
            q = torch.log_softmax(spliced.logits[:, :-1], -1)
            kl += float((p.exp() * (p - q)).sum())
            n += m
    assert r["ce_clean"] == pytest.approx(ce["clean"] / n, rel=1e-5)
    assert r["ce_spliced"] == pytest.approx(ce["spliced"] / n, rel=1e-5)
    assert r["kl_clean_spliced"] == pytest.approx(kl / n, rel=1e-4, abs=1e-7)
    if splice_all:
        assert r["spliced_rows"] == r["tokens"]
    else:
        assert r["unspliced_rows"] >= len(batches) * 3 - 2  # at least position 0 of every sequence


def test_splice_mask_rule():
    x = torch.ones(2, 6, 4)
    x[0, 3] *= 10  # an outlier row
    mask = splice_mask(x, 3.0, False)
    assert mask.tolist() == [[False, True, True, False, True, True], [False] + [True] * 5]
    assert splice_mask(x, None, False)[0, 3] and splice_mask(x, 3.0, True).all()


def test_evaluate_cli(tiny_gpt2_dir, corpus_file, tmp_path):
    sae_dir = tmp_path / "sae"
    make_sae("random").save(sae_dir)
    args = ["evaluate", "--sae", str(sae_dir), "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file),
            "--tokens", "480", "--seq-len", "24", "--batch-size", "4", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| CE loss recovered" in result.output and "| FVU" in result.output
    saved = json.loads((sae_dir / "evaluation.json").read_text())
    assert saved["tokens"] == 480 and saved["layer"] == LAYER and saved["hook"] == "resid_post"
    for key in ("mse", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_zero_ablated",
                "ce_loss_recovered", "kl_clean_spliced"):
        assert np.isfinite(saved[key]), key
    # The result doubles as a config: rerunning it gives the same numbers.
    again = CliRunner().invoke(main, ["evaluate", "--config", str(sae_dir / "evaluation.json"),
                                      "--out", str(tmp_path / "again.json")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["ce_spliced"] == saved["ce_spliced"]


def test_held_out_skips_the_store_text(tiny_gpt2_dir, corpus_file, tmp_path):
    store = tmp_path / "store"
    extract = CliRunner().invoke(main, [
        "extract", "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file), "--layers", str(LAYER),
        "--tokens", "480", "--seq-len", "24", "--batch-size", "4", "--device", "cpu", "--out", str(store)])
    assert extract.exit_code == 0, extract.output
    sae = make_sae("random")
    sae.metadata["store"] = str(store)
    sae.save(tmp_path / "sae")
    base = ["evaluate", "--sae", str(tmp_path / "sae"), "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file),
            "--tokens", "96", "--batch-size", "4", "--device", "cpu"]
    other_len = CliRunner().invoke(main, base + ["--seq-len", "32", "--out", str(tmp_path / "a.json")])
    assert other_len.exit_code == 0 and "pass --seq-len 24" in other_len.output
    same = CliRunner().invoke(main, base + ["--seq-len", "24", "--out", str(tmp_path / "b.json")])
    assert same.exit_code == 0, same.output
    assert json.loads((tmp_path / "b.json").read_text())["skipped_sequences"] == 480 // 24


@pytest.mark.parametrize("change,needle", [
    (["--layer", "9", "--allow-layer-mismatch"], "layer 9 is outside the model"),
    (["--tokens", "0"], "--tokens"),
])
def test_bad_input_exits_2(tiny_gpt2_dir, corpus_file, tmp_path, change, needle):
    sae_dir = tmp_path / "sae"
    make_sae("random").save(sae_dir)
    args = ["evaluate", "--sae", str(sae_dir), "--model", str(tiny_gpt2_dir), "--corpus", str(corpus_file),
            "--tokens", "96", "--seq-len", "24", "--device", "cpu", *change]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and needle in result.output, result.output


def test_d_in_mismatch_exits_2(tiny_gpt2_dir, corpus_file, tmp_path):
    wide = SparseAutoencoder(ReluSAEConfig(d_in=D + 4, d_sae=8), {"hook_layer": LAYER})
    wide.save(tmp_path / "wide")
    result = CliRunner().invoke(main, ["evaluate", "--sae", str(tmp_path / "wide"), "--model", str(tiny_gpt2_dir),
                                       "--corpus", str(corpus_file), "--tokens", "96", "--device", "cpu"])
    assert result.exit_code == 2 and "d_in=36" in result.output and "d_model=32" in result.output, result.output


def test_evaluate_checks_the_corpus_before_the_model_loads(tmp_path, monkeypatch):
    """An unusable corpus is one line, exit 2, and no model is loaded (offline hub corpora took minutes)."""
    import ghosttrack.extract.models as models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpus was checked")

    monkeypatch.setattr(models, "load_model", no_model)
    sae_dir = tmp_path / "sae"
    make_sae("random").save(sae_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["evaluate", "--sae", str(sae_dir), "--model", str(tmp_path / "no-model"),
                                       "--corpus", str(empty), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "corpus" in result.output and "no document" in result.output
