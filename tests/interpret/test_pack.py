"""The browser's packing: the uint8 error bound, varints, trimmed codes, windows shared between features."""
import numpy as np
import pytest

from ghosttrack.interpret.pack import (LEVELS, MISSING, TokenTable, WindowPacker, dequantise, feature_scale, quantise,
                                       read_varints, trimmed_codes, untrimmed_codes, varints)


def test_quantisation_error_bound():
    """Within half a step (scale / 508) of every activation; a firing token never reads as zero
    (below half a step it shows as one step, within scale / 254); zero and 'no value' are exact."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.lognormal(0.0, 2.0, 400) * (rng.random(400) < 0.7)  # zeros, tiny and large values
        scale = feature_scale([{"activation": float(a.max()), "acts": a.tolist()}])
        assert scale >= a.max() and scale <= a.max() * 1.001
        values = a.tolist() + [None, float("nan")]
        codes = quantise(values, scale)
        assert codes.dtype == np.uint8 and (codes[-2:] == MISSING).all() and (codes[:-2] <= LEVELS).all()
        back = dequantise(codes, scale)
        assert np.isnan(back[-2:]).all()
        err = np.abs(back[:-2] - a)
        small = (a > 0) & (a < scale / (2 * LEVELS))
        assert (err[~small] <= scale / (2 * LEVELS) * (1 + 1e-9)).all()
        assert (err[small] <= scale / LEVELS).all()
        assert (back[:-2][a > 0] > 0).all() and (back[:-2][a == 0] == 0).all()


def test_varints_and_trimmed_codes_round_trip():
    rng = np.random.default_rng(1)
    values = np.concatenate([[0, 1, 127, 128, 16_383, 16_384, 2**21, 2**40], rng.integers(0, 2**20, 500)])
    np.testing.assert_array_equal(read_varints(varints(values)), values)
    assert len(varints(np.arange(128))) == 128 and len(varints(np.array([128]))) == 2
    for codes in (np.zeros(17, np.uint8), np.array([0, 0, 5, 0, 254, 0, 0], np.uint8), np.full(300, 7, np.uint8),
                  np.array([255] + [0] * 200 + [3], np.uint8)):
        raw = trimmed_codes(codes)
        np.testing.assert_array_equal(untrimmed_codes(raw, len(codes)), codes)
    assert len(trimmed_codes(np.array([0] * 12 + [254] + [0] * 4, np.uint8))) == 2


def window(row: int, tokens: list[str], k: int) -> dict:
    return {"row": row, "tokens": tokens, "token_index": k, "text": "".join(tokens), "activation": 1.0, "position": 0}


def test_windows_are_stored_once():
    """Overlapping and repeated windows share the rows of one stream; each example finds its own tokens."""
    stream_tokens = [f"t{r}" for r in range(100)]
    table = TokenTable()
    packer = WindowPacker(table)
    wanted = [(10, 3, 2), (11, 4, 2), (10, 3, 2), (50, 2, 1), (90, 0, 3)]  # (row, before, after)
    keys = [packer.add(window(r, stream_tokens[r - b:r + a + 1], b)) for r, b, a in wanted]
    loose = packer.add({"tokens": ["x", "y"], "text": "xy", "activation": 1.0, "position": 0})
    packer.finish()
    rows = sorted({r - b + i for r, b, a in wanted for i in range(b + a + 1)})
    assert len(packer.ids) == len(rows) + 2  # each distinct row once, then the window without a row
    for (r, b, a), key in zip(wanted, keys):
        offset, length = packer.locate(key)
        assert [table.pieces[i] for i in packer.ids[offset:offset + length]] == stream_tokens[r - b:r + a + 1]
    offset, length = packer.locate(loose)
    assert [table.pieces[i] for i in packer.ids[offset:offset + length]] == ["x", "y"]
    flat = packer.payload()["spans"]
    assert flat == [7, 7, 48 - 14, 4, 90 - 52, 4, -1, 2]  # gaps after each span's end, -1: no row
    with pytest.raises(ValueError, match="two different tokens"):
        packer.add(window(11, ["t10", "other"], 1))
