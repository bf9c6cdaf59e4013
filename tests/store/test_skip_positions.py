"""scan_layer's skip_positions rule against a plain computation of the keep mask."""
import numpy as np

from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import row_norms, scan_layer
from ghosttrack.store.synthetic import write_synthetic_store

SEQ = 16


def test_skip_positions_keep_mask(tmp_path):
    write_synthetic_store(tmp_path / "s", layers=[0], d_model=12, n_tokens=SEQ * 13, chunk_tokens=SEQ * 3,
                          context_length=SEQ)  # 5 chunks, the last one partial
    store = ActivationStore.open(tmp_path / "s")
    pos = store.positions()
    norms = row_norms(store.read_rows(0, 0, store.n_tokens))
    for skip_flagged, skip in [(True, (1, 3)), (False, (0, 1)), (True, ()), (True, (0, 40))]:
        stats = scan_layer(store, 0, skip_flagged=skip_flagged, max_norm_ratio=1.05, skip_positions=skip,
                           progress=False)
        flagged = (pos == 0) if skip_flagged else np.zeros_like(pos, bool)
        by_position = np.isin(pos, skip) & ~flagged
        median = np.median(norms[~flagged & ~by_position])  # skipped positions do not move the median
        keep = ~flagged & ~by_position & (norms <= 1.05 * median)
        got = np.concatenate([stats.keep(c) for c in range(store.n_chunks)])
        np.testing.assert_array_equal(got, keep)
        assert stats.median_norm == np.float32(median) or abs(stats.median_norm - median) < 1e-5 * median
        assert stats.n_positions_skipped == by_position.sum() and stats.n_flagged_skipped == flagged.sum()
        assert stats.skip_positions == tuple(sorted(skip)) and stats.n_kept == keep.sum()
