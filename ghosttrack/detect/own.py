"""The model's own answers: the target Orgad et al. (2025) probe, instead of given statements.

For every question that has at least one correct answer in the data (label 1: the gold answers),
the model answers itself, greedily, from the same prompt the features read ("Q: {question}\\nA:"),
up to `max_new_tokens` tokens or the first newline. Its answer is graded against the gold answers
after normalisation (lower case, punctuation and the articles a/an/the removed, spaces collapsed):
correct when a gold answer equals it or occurs in it as whole words. The example becomes (question,
the model's answer, 1 if correct else 0): detection then predicts from the answer's exact tokens
whether the model's *own* answer is wrong. The model's accuracy goes into the report.

Not handled: multiple-choice options (the built-in sources have none); a data file with options
would need the letters graded instead.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ghosttrack.detect.data import Examples
from ghosttrack.detect.features import PROMPT_TEMPLATE

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (SQuAD's answer normalisation)."""
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower())).split())


def is_correct(answer: str, golds: list[str]) -> bool:
    """True when a normalised gold answer equals the normalised answer or occurs in it as whole words."""
    said = f" {normalise(answer)} "
    return any(gold and f" {gold} " in said for gold in (normalise(g) for g in golds))


@torch.no_grad()
def generate_answers(loaded, questions: list[str], *, max_new_tokens: int = 24, batch_size: int = 16,
                     max_tokens: int = 128, progress: bool = True) -> list[str]:
    """Greedy answers to "Q: {question}\\nA:", cut at the first newline (left-padded batches)."""
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    specials = tokenizer("", add_special_tokens=True)["input_ids"]
    prompts = [list(specials) + tokenizer(PROMPT_TEMPLATE.format(question=q), add_special_tokens=False)["input_ids"]
               [-(max_tokens - max_new_tokens - len(specials)):] for q in questions]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    answers: list[str] = [""] * len(prompts)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="own answers", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[b, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        for b, i in enumerate(idx):
            new = [t for t in out[b, width:].tolist()]
            if eos is not None and eos in new:
                new = new[:new.index(eos)]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).split("\n")[0].strip()
    return answers


def gold_answers(examples: Examples) -> dict[str, list[str]]:
    """{question: its correct answers} for every question with at least one."""
    golds: dict[str, list[str]] = {}
    for question, answer, label in zip(examples.questions, examples.answers, examples.labels):
        if label == 1:
            golds.setdefault(question, []).append(answer)
    return golds


def own_examples(examples: Examples, answers: dict[str, str], *, max_new_tokens: int) -> Examples:
    """One example per question with gold answers: (question, the model's answer, correct?)."""
    golds = gold_answers(examples)
    questions = [q for q in dict.fromkeys(examples.questions) if q in golds and answers.get(q, "").strip()]
    labels = np.array([int(is_correct(answers[q], golds[q])) for q in questions], np.int64)
    notes = {**examples.notes, "own_answers": {
        "prompt": PROMPT_TEMPLATE, "decoding": f"greedy, at most {max_new_tokens} tokens, cut at the first newline",
        "grading": "normalised gold answer equal to, or whole words inside, the normalised answer",
        "questions": len(golds), "answered": len(questions), "accuracy": float(labels.mean()) if len(labels) else None}}
    return Examples(questions, [answers[q] for q in questions], labels, np.arange(len(questions), dtype=np.int64),
                    questions, f"{examples.source} (the model's own answers)", notes)


def cached_answers(loaded, model_name: str, examples: Examples, cache_root: Path, *, max_new_tokens: int,
                   batch_size: int, max_tokens: int, progress: bool = True) -> dict[str, str]:
    """{question: the model's answer}, generated once and kept in CACHE/own-<key>.json."""
    questions = list(gold_answers(examples))
    key = hashlib.sha256(json.dumps([model_name, examples.fingerprint(), max_new_tokens, max_tokens]).encode())
    path = Path(cache_root) / f"own-{key.hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = loaded()
    answers = dict(zip(questions, generate_answers(model, questions, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size, max_tokens=max_tokens, progress=progress)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(answers))
    path.with_suffix(".tmp").replace(path)
    return answers
