"""Rows and positions that peak many features: a planted hub is found, chance alone never is."""
import re

import numpy as np

from ghosttrack.interpret.hubs import SINK_ALPHA, SINK_RATIO, TOP_BY_MAX, peak_hint, peak_positions, peak_rows

N_ROWS, SEQ, H = 20_000, 128, 5000


def random_tops(seed: int):
    rng = np.random.default_rng(seed)
    top_rows = rng.integers(0, N_ROWS, H)
    top_rows[rng.random(H) < 0.01] = -1  # dead features
    max_values = rng.lognormal(2.0, 0.5, H)
    return top_rows, max_values, np.arange(N_ROWS) % SEQ


def test_chance_alone_is_not_reported():
    for seed in range(5):
        top_rows, max_values, positions = random_tops(seed)
        rows = peak_rows(top_rows, max_values, N_ROWS)
        at = peak_positions(top_rows, max_values, positions, positions)
        assert rows == [] and at == [] and peak_hint(rows, at) is None


def test_planted_hub_among_the_strongest():
    """As on SmolLM2 layer 15: one row at position 1 peaks 16 features, 12 of the 50 strongest."""
    top_rows, max_values, positions = random_tops(7)
    hub = 12 * SEQ + 1
    strongest = np.argsort(-max_values)[:TOP_BY_MAX]
    planted = np.concatenate([strongest[:12], np.argsort(-max_values)[1000:1004]])
    top_rows[planted] = hub
    rows = peak_rows(top_rows, max_values, N_ROWS)
    assert rows[0]["row"] == hub and rows[0]["features"] == 16 and rows[0]["top_by_max"] == 12
    assert rows[0]["feature_ids"][:12] == sorted(strongest[:12].tolist(), key=lambda f: -max_values[f])
    assert len(rows) == 1
    at = peak_positions(top_rows, max_values, positions, positions)
    assert at[0]["position"] == 1 and at[0]["scope"] == "top_by_max" and at[0]["features"] >= 12
    hint = peak_hint(rows, at)
    assert "--skip-positions 1" in hint and f"row {hub}: 16 features, 12 of the 50" in hint


def test_a_row_only_the_strongest_features_share():
    """5 features in all would pass as chance (mean 0.25 per row over 20k rows), but 4 of the 50
    strongest on one row would not."""
    top_rows, max_values, positions = random_tops(8)
    order = np.argsort(-max_values)
    top_rows[np.concatenate([order[:4], order[3000:3001]])] = 777
    rows = peak_rows(top_rows, max_values, N_ROWS)
    assert [(r["row"], r["features"], r["top_by_max"]) for r in rows] == [(777, 5, 4)]


def positions_with(counts_at: dict[int, int], n_features: int, seed: int = 0):
    """n_features live features: exactly counts_at[p] of them peak at position p, the rest at
    random rows of the other positions."""
    rng = np.random.default_rng(seed)
    positions = np.arange(N_ROWS) % SEQ
    others = np.flatnonzero(~np.isin(positions, list(counts_at)))
    top_rows = rng.choice(others, n_features)
    at = 0
    for p, c in counts_at.items():
        top_rows[at:at + c] = rng.integers(0, N_ROWS // SEQ, c) * SEQ + p
        at += c
    return top_rows, rng.lognormal(2.0, 0.5, n_features), positions


def test_a_sink_position_is_suggested_with_its_share_and_chance():
    """A sink: 30% of 5000 features peak at position 1 (fair share 1/128 = 0.78%)."""
    top_rows, max_values, positions = positions_with({1: 1500}, H)
    at = peak_positions(top_rows, max_values, positions, positions)
    assert at[0]["position"] == 1 and at[0]["suggest"] and at[0]["sink_p"] < SINK_ALPHA
    hint = peak_hint([], at)
    assert hint.endswith("with --skip-positions 1 (saved with the SAE).")
    assert re.search(r"position 1 holds (30\.0% of the live|\d+\.\d% of the 50 strongest) features' top examples "
                     r"\(chance: 0\.78%", hint)
    assert f"p < {SINK_ALPHA:g}" in hint and f"more than {SINK_RATIO:g}x its share" in hint


def test_an_overrepresented_position_that_is_no_sink():
    """The demo's case: position 45 holds 1.4% of 4,608 features' top examples against 0.79% by chance.
    Chance does not give that (it is listed), but it is no sink: never suggested, never a 'P'."""
    n = 4608
    top_rows, max_values, positions = positions_with({45: 65}, n, seed=2)
    at = peak_positions(top_rows, max_values, positions, positions)
    listed = {p["position"]: p for p in at}
    assert 45 in listed and 0.0135 < listed[45]["share"] < 0.016 and not listed[45]["suggest"]
    hint = peak_hint([], at)
    assert "--skip-positions" in hint and "none is suggested for --skip-positions" in hint
    assert re.search(r"--skip-positions [^ .]", hint) is None  # no value follows the flag anywhere
    # Rows standing out with no position to suggest: still no malformed value.
    hint = peak_hint([{"row": 5, "features": 9, "share": 0.002, "top_by_max": 0, "feature_ids": [1]}], [])
    assert "none is suggested" in hint and re.search(r"--skip-positions [^ .]", hint) is None


def test_no_sink_no_suggestion():
    for seed in range(3):
        top_rows, max_values, positions = positions_with({}, H, seed=seed)
        at = peak_positions(top_rows, max_values, positions, positions)
        assert not any(p["suggest"] for p in at)
