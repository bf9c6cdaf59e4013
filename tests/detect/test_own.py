"""The model's own answers (ghosttrack.detect.own): grading, and batched greedy answers equal to
answering one question at a time."""
import numpy as np
import pytest
import torch

from ghosttrack.detect.data import Examples
from ghosttrack.detect.features import PROMPT_TEMPLATE
from ghosttrack.detect.own import generate_answers, is_correct, normalise, own_examples


def test_grading_normalises_and_matches_whole_words():
    assert normalise("  The Mitochondria!  ") == "mitochondria"
    assert is_correct("It is the mitochondria.", ["Mitochondria"])
    assert is_correct("oxygen", ["carbon dioxide", "Oxygen"])
    assert not is_correct("oxygenated blood", ["oxygen gas"])
    assert not is_correct("hydrogen", ["hydro"])  # whole words only
    assert not is_correct("anything", [""])


def test_own_examples_one_per_question_with_gold_labelled_by_grading():
    examples = Examples(["q1", "q1", "q2", "q3"], ["Paris", "Lyon", "4", "blue"], np.array([1, 0, 1, 0]),
                        np.array([0, 0, 1, 2]), ["q1", "q2", "q3"], "test")
    graded = own_examples(examples, {"q1": "paris, of course", "q2": "five"}, max_new_tokens=8)
    assert graded.questions == ["q1", "q2"] and graded.answers == ["paris, of course", "five"]
    assert graded.labels.tolist() == [1, 0] and graded.n_groups == 2
    assert graded.notes["own_answers"]["accuracy"] == 0.5 and graded.notes["own_answers"]["questions"] == 2


def test_batched_greedy_answers_equal_one_at_a_time(tiny_gpt2_dir):
    from conftest import WORDS
    from ghosttrack.extract.models import load_model

    loaded = load_model(str(tiny_gpt2_dir))
    rng = np.random.default_rng(0)
    questions = [" ".join(rng.choice(WORDS, rng.integers(1, 9))) + "?" for _ in range(6)]
    batched = generate_answers(loaded, questions, max_new_tokens=6, batch_size=4, progress=False)
    assert sum(bool(a) for a in batched) >= 3  # the tiny model does say something
    tok = loaded.tokenizer
    for question, answer in zip(questions, batched):
        ids = tok("", add_special_tokens=True)["input_ids"] + \
            tok(PROMPT_TEMPLATE.format(question=question), add_special_tokens=False)["input_ids"]
        out = ids
        with torch.no_grad():
            for _ in range(6):  # plain greedy loop, no padding, no generate()
                logits = loaded.model(input_ids=torch.tensor([out])).logits[0, -1]
                out = out + [int(logits.argmax())]
        new = out[len(ids):]
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        assert answer == tok.decode(new, skip_special_tokens=True).split("\n")[0].strip()


def test_p_true_batched_equals_one_at_a_time(tiny_gpt2_dir):
    from conftest import WORDS
    from ghosttrack.detect.ptrue import encode, p_true_scores, yes_no_ids
    from ghosttrack.extract.models import load_model

    loaded = load_model(str(tiny_gpt2_dir))
    rng = np.random.default_rng(1)
    n = 7
    examples = Examples([" ".join(rng.choice(WORDS, rng.integers(1, 9))) + "?" for _ in range(n)],
                        [" ".join(rng.choice(WORDS, rng.integers(1, 5))) for _ in range(n)],
                        rng.integers(0, 2, n), np.arange(n), [str(i) for i in range(n)], "test")
    # The tiny tokenizer knows only WORDS: two of them stand in for " Yes" and " No".
    words = tuple(" " + w for w in WORDS[:2])
    batched = p_true_scores(loaded, examples, batch_size=3, progress=False, words=words)
    yes, no = yes_no_ids(loaded.tokenizer, words)
    for i in range(n):
        ids = encode(loaded.tokenizer, examples.questions[i], examples.answers[i], 192)
        with torch.no_grad():
            lp = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        assert batched[i] == pytest.approx(float(lp[yes] - lp[no]), abs=1e-4)
    assert np.std(batched) > 0
