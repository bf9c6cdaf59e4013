"""mix_rows: every row once, right batch counts, really mixed, deterministic, value-blind."""

import numpy as np
import pytest

from ghosttrack.store.mixing import mix_rows


def _chunks(sizes, width=3):
    """Chunks whose rows carry (chunk index, global row index, ...)."""
    out, start = [], 0
    for c, n in enumerate(sizes):
        rows = np.zeros((n, width), np.int64)
        rows[:, 0], rows[:, 1] = c, np.arange(start, start + n)
        out.append(rows)
        start += n
    return out


@pytest.mark.parametrize("sizes,batch,buffer", [([100] * 10, 16, 64), ([37, 0, 5, 250, 1, 99], 7, 14),
                                                 ([10], 4, 8), ([3, 3], 8, 16)])
def test_every_row_once_and_batch_counts(sizes, batch, buffer):
    total = sum(sizes)
    batches = list(mix_rows(iter(_chunks(sizes)), buffer, batch, np.random.default_rng(0)))
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1)
    assert len(batches) == -(-total // batch) and len(batches[-1]) == total - batch * (len(batches) - 1)
    ids = np.concatenate([b[:, 1] for b in batches])
    np.testing.assert_array_equal(np.sort(ids), np.arange(total))


def test_order_is_mixed_across_chunks():
    batches = list(mix_rows(iter(_chunks([200] * 20)), 400, 32, np.random.default_rng(1)))
    per_batch = [len(np.unique(b[:, 0])) for b in batches]
    assert np.mean(per_batch) > 2.5  # a batch mixes several chunks
    ids = np.concatenate([b[:, 1] for b in batches])
    assert not np.array_equal(ids, np.sort(ids))
    # early batches do not hold only the first chunk, late ones reach back to earlier chunks
    assert len(np.unique(batches[0][:, 0])) > 1 and batches[-1][:, 0].min() < 19


def test_deterministic_per_seed_and_independent_of_values():
    chunks = _chunks([50, 70, 20, 90])

    def run(seed, cs):
        return [b[:, 1].copy() for b in mix_rows(iter(cs), 40, 8, np.random.default_rng(seed))]

    a, b, c = run(5, chunks), run(5, chunks), run(6, chunks)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # the same counts with other values (row numbers only) give the same order
    numbers = [np.arange(x[0, 1], x[0, 1] + len(x)) for x in chunks]
    d = [x.copy() for x in mix_rows(iter(numbers), 40, 8, np.random.default_rng(5))]
    assert all(np.array_equal(x, y) for x, y in zip(a, d))


def test_batches_stay_valid_and_arguments_checked():
    batches = []
    for b in mix_rows(iter(_chunks([30, 30, 30])), 20, 5, np.random.default_rng(0)):
        batches.append(b)  # kept without copying
    ids = np.concatenate([b[:, 1] for b in batches])
    np.testing.assert_array_equal(np.sort(ids), np.arange(90))
    with pytest.raises(ValueError, match="buffer_rows >= 2"):
        next(mix_rows(iter(_chunks([5])), 7, 4, np.random.default_rng(0)))
