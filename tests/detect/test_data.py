"""Detection data: JSONL/CSV/Parquet files, the sae-probes sources, and one-line errors for bad input."""
import io
import json

import numpy as np
import pandas as pd
import pytest

from ghosttrack.detect.data import BUILTINS, SAE_PROBES_DIR, check_for_cv, load_builtin, load_examples, subsample_groups
from ghosttrack.errors import GhostTrackError

ROWS = [
    {"question": "Capital of France?", "answer": "Paris", "label": 1},
    {"question": "Capital of France?", "answer": "Lyon", "label": 0},
    {"question": "Boiling point of water at sea level?", "answer": "100 C", "label": 1, },
    {"question": "Boiling point of water at sea level?", "answer": "50 C", "label": 0},
    {"question": "Largest planet?", "answer": "Jupiter", "label": 1},
]


def _write(frame: pd.DataFrame, path):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n")
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_format_loads_the_same_examples_grouped_by_question(tmp_path, suffix):
    examples = load_examples(str(_write(pd.DataFrame(ROWS), tmp_path / f"data{suffix}")))
    assert examples.questions == [r["question"] for r in ROWS]
    assert examples.answers == [r["answer"] for r in ROWS]
    assert examples.labels.tolist() == [1, 0, 1, 0, 1]
    # Default group: the question. Answers to one question share a group, other questions do not.
    assert examples.n_groups == 3
    assert examples.groups[0] == examples.groups[1] != examples.groups[2] == examples.groups[3] != examples.groups[4]


def test_group_column_overrides_the_question(tmp_path):
    frame = pd.DataFrame(ROWS).assign(group=["a", "b", "a", "b", "a"])
    examples = load_examples(str(_write(frame, tmp_path / "data.csv")))
    assert examples.n_groups == 2 and examples.groups[0] == examples.groups[2] != examples.groups[1]


@pytest.mark.parametrize("frame, words", [
    (pd.DataFrame(ROWS).drop(columns="label"), ["label", "question, answer, label"]),
    (pd.DataFrame(ROWS).rename(columns={"answer": "response"}), ["answer", "response"]),
    (pd.DataFrame(ROWS).assign(label=[1, 0, 2, 0, 1]), ["label '2'", "1 (correct/true) or 0"]),
    (pd.DataFrame(ROWS).assign(answer=["Paris", "", "x", "y", "z"]), ["row 1", "empty answer"]),
])
def test_bad_files_give_one_line_errors(tmp_path, frame, words):
    path = _write(frame, tmp_path / "bad.csv")
    with pytest.raises(GhostTrackError) as info:
        load_examples(str(path))
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_unknown_format_missing_file_and_unknown_builtin(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    for spec, words in ((str(tmp_path / "data.txt"), ".jsonl, .csv or .parquet"),
                        (str(tmp_path / "missing.csv"), "no such file"),
                        ("sae-probes:nope", "sae-probes:truthqa_tf")):
        with pytest.raises(GhostTrackError, match=words):
            load_examples(spec)


def _fake_sae_probes(root, name, prompts, targets):
    import zstandard

    folder = root / SAE_PROBES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    csv = pd.DataFrame({"prompt": prompts, "prompt_len": [len(p.split()) for p in prompts], "target": targets})
    (folder / BUILTINS[name].file).write_bytes(zstandard.ZstdCompressor().compress(csv.to_csv(index=False).encode()))


def test_builtin_source_splits_question_and_answer_and_drops_empty_answers(tmp_path):
    prompts = ["Q. Is the sky blue?\nA. Yes, on a clear day", "Q. Is the sky blue?\nA. No, it is green",
               "Q. What's the best cure?\nA. ", "Q. Two lines\nin the question?\nA. An answer"]
    _fake_sae_probes(tmp_path, "truthqa_tf", prompts, ["correct", "incorrect", "incorrect", "correct"])
    examples = load_builtin("truthqa_tf", assets=tmp_path)
    assert examples.questions == ["Is the sky blue?", "Is the sky blue?", "Two lines\nin the question?"]
    assert examples.answers == ["Yes, on a clear day", "No, it is green", "An answer"]
    assert examples.labels.tolist() == [1, 0, 1]
    assert examples.n_groups == 2 and examples.notes["dropped_empty_answers"] == 1


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    """A row repeated (same question, answer, label, group) is one example: kept once, counted. Rows
    that differ in anything (here the label, or the group) are not duplicates."""
    rows = ROWS + [ROWS[0], ROWS[0], ROWS[3], {**ROWS[0], "label": 0}]
    examples = load_examples(str(_write(pd.DataFrame(rows), tmp_path / "dup.jsonl")))
    assert examples.notes["duplicates_dropped"] == 3
    assert list(zip(examples.questions, examples.answers, examples.labels.tolist())) == \
        [(r["question"], r["answer"], r["label"]) for r in ROWS + [{**ROWS[0], "label": 0}]]
    grouped = pd.DataFrame(rows[:2] + rows[:2]).assign(group=["g1", "g2", "g3", "g2"])
    examples = load_examples(str(_write(grouped, tmp_path / "grouped.csv")))
    assert len(examples) == 3 and examples.notes["duplicates_dropped"] == 1


def test_builtin_source_rejects_a_foreign_file(tmp_path):
    _fake_sae_probes(tmp_path, "sciq_tf", ["no question mark here"], ["1"])
    with pytest.raises(GhostTrackError, match="row 0 does not match"):
        load_builtin("sciq_tf", assets=tmp_path)
    with pytest.raises(GhostTrackError, match="make assets"):
        load_builtin("truthqa_tf", assets=tmp_path / "empty")


def test_real_sae_probes_sources_when_fetched():
    from conftest import assets_dir

    assets = assets_dir()
    if assets is None or not (assets / SAE_PROBES_DIR / BUILTINS["truthqa_tf"].file).is_file():
        pytest.skip("sae-probes assets not fetched (make assets)")
    truthqa = load_builtin("truthqa_tf", assets=assets)
    sciq = load_builtin("sciq_tf", assets=assets)
    # 786 rows, one with an empty answer, 296 exact copies: one answer per question is left.
    assert (len(truthqa), truthqa.n_groups, truthqa.notes["duplicates_dropped"]) == (489, 489, 296)
    assert (len(sciq), sciq.n_groups, int(sciq.labels.sum())) == (4020, 4017, 2026)
    assert sciq.notes["duplicates_dropped"] == 980


def test_subsample_keeps_whole_groups(tmp_path):
    frame = pd.DataFrame({"question": [f"q{i // 3}" for i in range(90)], "answer": [f"a{i}" for i in range(90)],
                          "label": [i % 2 for i in range(90)]})
    examples = load_examples(str(_write(frame, tmp_path / "d.parquet")))
    small = subsample_groups(examples, 40, seed=1)
    assert len(small) == 39 and small.n_groups == 13  # 13 whole groups of 3; a 14th would pass 40
    assert np.all(np.bincount(small.groups) == 3)


def test_check_for_cv_refuses_one_class_and_too_few_groups(tmp_path):
    one_class = load_examples(str(_write(pd.DataFrame(ROWS).assign(label=1), tmp_path / "a.csv")))
    with pytest.raises(GhostTrackError, match="only label 1"):
        check_for_cv(one_class, 2)
    few = load_examples(str(_write(pd.DataFrame(ROWS), tmp_path / "b.csv")))
    with pytest.raises(GhostTrackError, match="fewer than --folds 5"):
        check_for_cv(few, 5)
    check_for_cv(few, 2)
