"""Hook points agree with HF's hidden_states for every supported family; the forward stops early."""
import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    GPTNeoXModel,
    LlamaConfig,
    LlamaModel,
)

from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.hooks import capture_residuals, find_blocks, forward_until, replace_residual

N_LAYERS = 3


def _models():
    common = dict(vocab_size=97, num_hidden_layers=N_LAYERS, num_attention_heads=2)
    return {
        "gpt2": GPT2Model(GPT2Config(n_layer=N_LAYERS, n_embd=32, n_head=2, vocab_size=97)),
        "llama": LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)),
        "neox": GPTNeoXModel(GPTNeoXConfig(hidden_size=32, intermediate_size=64, **common)),
        "bert": BertModel(BertConfig(hidden_size=32, intermediate_size=64, **common)),
    }


@pytest.fixture(params=["gpt2", "llama", "neox", "bert"])
def model(request):
    torch.manual_seed(0)
    return _models()[request.param].eval()


def _reference_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states


def test_resid_post_and_pre_match_hf_hidden_states(model):
    ids = torch.randint(0, 97, (2, 11))
    reference = _reference_hidden(model, ids)
    for hook, offset in (("resid_post", 1), ("resid_pre", 0)):
        got = {}
        # The last block's resid_post differs from HF's final hidden_states (which add the final norm),
        # so compare the blocks before it.
        layers = [0, 1] if hook == "resid_post" else [0, 1, 2]
        with torch.no_grad(), capture_residuals(model, layers, hook, lambda i, h: got.__setitem__(i, h.clone())):
            forward_until(model, ids)
        for layer in layers:
            torch.testing.assert_close(got[layer], reference[layer + offset])


def test_blocks_after_deepest_layer_do_not_run(model):
    blocks = find_blocks(model)
    ran = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    with torch.no_grad(), capture_residuals(model, [0], "resid_post", lambda i, h: None):
        forward_until(model, torch.randint(0, 97, (1, 5)))
    for handle in handles:
        handle.remove()
    assert ran == [0]


def test_replace_residual_splices_the_stream(model):
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        clean = model(input_ids=ids).last_hidden_state
        with replace_residual(model, 1, "resid_post", lambda h: h):
            same = model(input_ids=ids).last_hidden_state
        with replace_residual(model, 1, "resid_post", torch.zeros_like):
            ablated = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(ablated, clean)


def test_layer_outside_model_names_the_valid_range(model):
    with pytest.raises(GhostTrackError, match="0-2"):
        with capture_residuals(model, [5], "resid_post", lambda i, h: None):
            pass
