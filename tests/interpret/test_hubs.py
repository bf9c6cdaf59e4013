"""Rows and positions that peak many features: a planted hub is found, chance alone never is."""
import numpy as np

from ghosttrack.interpret.hubs import TOP_BY_MAX, peak_hint, peak_positions, peak_rows

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
