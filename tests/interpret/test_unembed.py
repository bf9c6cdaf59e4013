"""Promoted / suppressed tokens read from model files, against the model's own final norm and unembedding."""
import numpy as np
import pytest
import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interpret.unembed import load_unembedding, logit_effects

TOP = 7


def oracle_logits(model, d_HD: torch.Tensor) -> torch.Tensor:
    """W_U applied to the final norm's output for input d, times the norm's own per-row divisor:
    the model's modules themselves, with their (positive) per-token scale taken back out."""
    norm = model.get_decoder().norm if hasattr(model.get_decoder(), "norm") else model.transformer.ln_f
    with torch.no_grad():
        if isinstance(norm, torch.nn.LayerNorm):
            divisor = (d_HD.var(dim=1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            normed = norm(d_HD) - norm.bias
        else:  # an RMSNorm
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
            divisor = (d_HD.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()
            normed = norm(d_HD)
        return (normed * divisor) @ model.get_output_embeddings().weight.T


def check_against(model, directory_or_file, vocab=None):
    torch.manual_seed(1)
    W_dec = torch.randn(13, model.config.hidden_size) + 0.3  # a mean off zero: a LayerNorm removes it
    up_ids, up_vals, down_ids, down_vals, _, _ = logit_effects(W_dec, load_unembedding(directory_or_file), TOP,
                                                               vocab_size=vocab, block=5)
    want = oracle_logits(model, W_dec)[:, :vocab]
    top = want.topk(TOP, dim=1)
    bottom = (-want).topk(TOP, dim=1)
    np.testing.assert_array_equal(up_ids, top.indices.numpy())
    np.testing.assert_allclose(up_vals, top.values.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(down_ids, bottom.indices.numpy())
    np.testing.assert_allclose(down_vals, -bottom.values.numpy(), rtol=1e-4, atol=1e-5)


def randomise_norm(model):
    """Final norm weights far from 1 (fresh models start at 1 or 0), so a missing fold shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_f.weight", "model.norm.weight")):
                p.copy_(torch.empty_like(p).uniform_(-2, 2))
    return model


def test_gpt2_layernorm_tied(tiny_gpt2_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = randomise_norm(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir))
    model.save_pretrained(tmp_path)
    unembed = load_unembedding(tmp_path)
    assert unembed.center and "wte" in unembed.source and unembed.d_model == 32
    check_against(model, tmp_path)
    check_against(model, tmp_path, vocab=200)  # a tokenizer smaller than the padded vocabulary


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_rmsnorm_untied(family, tmp_path):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=101, hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=12, tie_word_embeddings=False)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:  # Gemma's norm multiplies by (1 + weight)
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**common))
    randomise_norm(model)
    model.save_pretrained(tmp_path)
    unembed = load_unembedding(tmp_path)
    assert not unembed.center and "lm_head" in unembed.source
    check_against(model, tmp_path)


@pytest.mark.parametrize("quantized", [False, True])
def test_gguf(tmp_path, quantized):
    import gguf
    import transformers

    torch.manual_seed(0)
    model = randomise_norm(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True)))
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    embed = model.get_input_embeddings().weight.detach().numpy().astype(np.float32)
    if quantized:  # Q8_0, as llama.cpp stores SmolLM2's embedding; compare with what it dequantizes to
        q = gguf.quants.quantize(embed, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("token_embd.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(torch.from_numpy(
                gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)))
    else:
        writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output_norm.weight", model.model.norm.weight.detach().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    unembed = load_unembedding(path)
    assert not unembed.center and unembed.W_U_VD.shape == (96, 64)
    check_against(model, path)
    assert load_unembedding(tmp_path, gguf_file="tiny.gguf").source == unembed.source


def test_bad_model_paths(tmp_path):
    with pytest.raises(GhostTrackError, match="neither a local model directory nor a .gguf"):
        load_unembedding(tmp_path / "nowhere")
    with pytest.raises(GhostTrackError, match="no .safetensors"):
        load_unembedding(tmp_path)


def test_direct_effect_matches_the_model_run(tiny_gpt2_dir, tmp_path):
    """The panel's ranking is the model's own: run the tiny GPT-2 with +a*d and -a*d added to the
    last block's output (its direct path to the logits is only ln_f and the unembedding); for a
    large a the difference of the final logits is proportional to the panel's logits (the
    LayerNorm's bias and the token's own residual cancel or vanish) on every position."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = randomise_norm(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)).eval()
    model.save_pretrained(tmp_path)
    W_dec = torch.randn(6, model.config.n_embd) + 0.3
    effects = logit_effects(W_dec, load_unembedding(tmp_path), TOP)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    for f, d in enumerate(W_dec):
        def run(sign: float) -> torch.Tensor:
            def add(_module, _inputs, output):  # blocks return a tensor or a tuple, by version
                if isinstance(output, tuple):
                    return (output[0] + sign * 1e4 * d,) + output[1:]
                return output + sign * 1e4 * d
            hook = model.transformer.h[-1].register_forward_hook(add)
            try:
                with torch.no_grad():
                    return model(ids).logits.double()
            finally:
                hook.remove()
        diff = (run(1.0) - run(-1.0)).reshape(-1, model.config.vocab_size)
        for row in diff:
            np.testing.assert_array_equal(row.topk(TOP).indices.numpy(), effects.up_ids[f])
            np.testing.assert_array_equal((-row).topk(TOP).indices.numpy(), effects.down_ids[f])
            ratio = row[effects.up_ids[f]].numpy() / effects.up_values[f]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)


def test_noise_like_directions_are_flagged(tiny_gpt2_dir):
    """A direction that writes onto one token's unembedding row is peaked (high kurtosis); random
    directions are not: the random ones fall at or under the noise level, the peaked ones above."""
    unembed = load_unembedding(tiny_gpt2_dir)
    torch.manual_seed(3)
    peaked = unembed.W_U_VD[:4].clone()  # each promotes its own token far above the rest
    noise = torch.randn(200, unembed.d_model)
    effects = logit_effects(torch.cat([peaked, noise]), unembed, TOP)
    assert (effects.kurtosis[:4] > effects.noise_kurtosis).all()
    assert (effects.kurtosis[4:] <= effects.noise_kurtosis).mean() > 0.95
    np.testing.assert_array_equal(effects.up_ids[:4, 0], np.arange(4))
