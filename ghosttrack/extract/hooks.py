"""Residual-stream hook points per architecture family, captured or replaced in one forward pass.

`resid_post` of block i is the block's output (the residual stream after it);
`resid_pre` of block i is its input. For the last block, `resid_post` is taken
before the model's final norm, unlike HF's `hidden_states[-1]`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ghosttrack.errors import GhostTrackError

HOOK_POINTS = ("resid_post", "resid_pre")

# Attribute paths of the block list, per family; checked in order.
_BLOCK_PATHS = (
    "transformer.h",  # GPT-2, GPT-J
    "model.layers",  # Llama, Mistral, Qwen, SmolLM2
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "bert.encoder.layer",  # BERT for a task head
    "encoder.layer",  # BertModel, RoBERTa
    "roberta.encoder.layer",
    "h",  # a bare GPT2Model
    "layers",  # a bare LlamaModel / GPTNeoXModel
)


class StopForward(Exception):
    """Raised by the deepest hook: the blocks after it, the final norm and the LM head never run."""


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks."""
    for path in _BLOCK_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise GhostTrackError(
        f"cannot find the transformer blocks of {type(model).__name__}; "
        "supported families: GPT-2, Llama-style, GPT-NeoX, BERT-style"
    )


def check_layers(layers: list[int], n_layers: int) -> None:
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise GhostTrackError(
            f"layer {bad[0]} is outside the model: it has layers 0-{n_layers - 1}; pass --layers within that range"
        )


def _hidden(output) -> torch.Tensor:
    # transformers >= 5 blocks return a tensor; older ones a tuple whose first item is the hidden state.
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def capture_residuals(
    model: nn.Module,
    layers: list[int],
    hook: str,
    sink: Callable[[int, torch.Tensor], None],
    *,
    stop_after_deepest: bool = True,
) -> Iterator[None]:
    """Call `sink(layer, hidden_BTD)` for every requested layer during each forward.

    With `stop_after_deepest`, the forward raises StopForward after the deepest layer
    is captured; callers catch it (see `forward_until`).
    """
    if hook not in HOOK_POINTS:
        raise GhostTrackError(f"unknown hook point '{hook}'; choose one of {', '.join(HOOK_POINTS)}")
    blocks = find_blocks(model)
    check_layers(layers, len(blocks))
    deepest = max(layers)
    handles = []
    for layer in sorted(set(layers)):
        is_deepest = stop_after_deepest and layer == deepest
        if hook == "resid_post":

            def post(module, args, output, layer=layer, is_deepest=is_deepest):
                sink(layer, _hidden(output))
                if is_deepest:
                    raise StopForward

            handles.append(blocks[layer].register_forward_hook(post))
        else:

            def pre(module, args, kwargs, layer=layer, is_deepest=is_deepest):
                sink(layer, _input_hidden(args, kwargs))
                if is_deepest:
                    raise StopForward

            handles.append(blocks[layer].register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_until(model: nn.Module, input_ids: torch.Tensor, **kwargs) -> None:
    """Run the model's forward, stopping cleanly where a hook raised StopForward."""
    try:
        model(input_ids=input_ids, use_cache=False, **kwargs)
    except StopForward:
        pass


@contextmanager
def replace_residual(
    model: nn.Module, layer: int, hook: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace the residual stream at (layer, hook) with fn(hidden) for every forward in the block."""
    blocks = find_blocks(model)
    check_layers([layer], len(blocks))
    if hook == "resid_post":

        def post(module, args, output):
            return _replace_hidden(output, fn(_hidden(output)))

        handle = blocks[layer].register_forward_hook(post)
    elif hook == "resid_pre":

        def pre(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        handle = blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
    else:
        raise GhostTrackError(f"unknown hook point '{hook}'; choose one of {', '.join(HOOK_POINTS)}")
    try:
        yield
    finally:
        handle.remove()
