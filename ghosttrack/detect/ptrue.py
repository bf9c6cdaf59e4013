"""P(True) (Kadavath et al. 2022): ask the model whether the answer is true, read its Yes/No logits.

The model reads PTRUE_TEMPLATE with the question and the answer filled in; the score is
log p(" Yes") - log p(" No") at the next token (the first token of each word, as the tokenizer
writes it after "Answer:"). One forward pass per batch, right-padded: each row is read at its own
last token, so padding never enters a score.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ghosttrack.detect.data import Examples
from ghosttrack.errors import GhostTrackError

PTRUE_TEMPLATE = "Q: {question}\nA: {answer}\nIs the answer above true? Answer Yes or No.\nAnswer:"


def yes_no_ids(tokenizer, words: tuple[str, str] = (" Yes", " No")) -> tuple[int, int]:
    """The first token of each of the two words (they must differ)."""
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words)
    if yes == no:
        raise GhostTrackError(f"the tokenizer starts {words[0]!r} and {words[1]!r} with the same token; "
                              "P(True) cannot tell them apart")
    return yes, no


def encode(tokenizer, question: str, answer: str, max_tokens: int) -> list[int]:
    """Token ids of the prompt, cut from the left to fit (the question first: the answer and the ask stay)."""
    specials = tokenizer("", add_special_tokens=True)["input_ids"]
    ids = tokenizer(PTRUE_TEMPLATE.format(question=question, answer=answer), add_special_tokens=False)["input_ids"]
    return list(specials) + ids[-(max_tokens - len(specials)):]


@torch.no_grad()
def p_true_scores(loaded, examples: Examples, *, batch_size: int = 16, max_tokens: int = 192,
                  progress: bool = True, words: tuple[str, str] = (" Yes", " No")) -> np.ndarray:
    """(N,) log p(Yes) - log p(No) of every example."""
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    yes, no = yes_no_ids(tokenizer, words)
    encoded = [encode(tokenizer, q, a, max_tokens) for q, a in zip(examples.questions, examples.answers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = np.zeros(len(encoded))
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="P(True)", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        lengths = torch.tensor([len(encoded[i]) for i in idx])
        ids = torch.full((len(idx), int(lengths.max())), pad, dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, :len(encoded[i])] = torch.tensor(encoded[i])
        mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        last = logits[torch.arange(len(idx)), (lengths - 1).to(device)].float().log_softmax(-1).cpu()
        scores[idx] = (last[:, yes] - last[:, no]).numpy()
    return scores
