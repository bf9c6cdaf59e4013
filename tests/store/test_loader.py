"""ActivationLoader and scan_layer: split, filters, determinism, exact resume, resident == streaming."""

import threading

import numpy as np
import pytest
import torch

from ghosttrack.store.background import in_background
from ghosttrack.store.errors import StoreError
from ghosttrack.store.loader import ActivationLoader, LoaderConfig, split_chunks
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import row_norms, scan_layer
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS
from ghosttrack.store.writer import StoreWriter

D, CT, CTX = 12, 64, 8
N = 20 * CT + 23  # 21 chunks, the last one partial
B = 16


def _write(path, x, ctx=CTX):
    n = len(x)
    idx = np.arange(n)
    with StoreWriter.open(path, layers=[3], d_model=D, target_tokens=n, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": ctx}) as w:
        for a in range(0, n, 50):
            s = slice(a, a + 50)
            w.append({3: x[s]}, idx[s].astype(np.int32), (idx[s] % ctx).astype(np.int32), idx[s] // ctx)
        w.close(complete=True)
    return ActivationStore.open(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A store of random rows: position-0 rows are huge (sinks), a few others are outliers."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float16)
    x[::CTX] *= 40
    x[rng.choice(N, 30, replace=False)] *= 9
    store = _write(tmp_path_factory.mktemp("loader") / "s", x)
    return store, x


def _keys(batches) -> list[bytes]:
    """Each row's fp16 bytes (the rows are all distinct random vectors)."""
    return [r.tobytes() for b in batches for r in b.to(torch.float16).numpy()]


def _expected_keep(x):
    norms = row_norms(x)
    flagged = np.arange(len(x)) % CTX == 0
    median = np.median(norms[~flagged])
    return ~flagged & (norms <= 3.0 * median), flagged, norms > 3.0 * median


def test_split_is_disjoint_covering_and_deterministic():
    for n in (1, 2, 7, 21, 100):
        train, val = split_chunks(n, 0.05, seed=3)
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
        assert len(val) == (0 if n < 2 else max(1, round(0.05 * n))) and len(train) >= 1
        np.testing.assert_array_equal(split_chunks(n, 0.05, seed=3)[1], val)
    assert not np.array_equal(split_chunks(100, 0.2, 1)[1], split_chunks(100, 0.2, 2)[1])
    assert len(split_chunks(10, 0.0, 0)[1]) == 0


def test_scan_counts_and_filters(data):
    store, x = data
    stats = scan_layer(store, 3, progress=False)
    keep, flagged, high = _expected_keep(x)
    assert stats.n_rows == N and stats.n_nonfinite == 0
    assert stats.n_flagged_skipped == flagged.sum()
    assert stats.n_outliers_skipped == (high & ~flagged).sum() > 0
    assert stats.median_norm == pytest.approx(float(np.median(row_norms(x)[~flagged])))
    assert stats.n_kept == keep.sum()
    np.testing.assert_array_equal(np.concatenate([stats.keep(c) for c in range(store.n_chunks)]), keep)
    loose = scan_layer(store, 3, skip_flagged=False, max_norm_ratio=None, progress=False)
    assert loose.n_kept == N and loose.n_flagged_skipped == loose.n_outliers_skipped == 0


def test_epoch_yields_exactly_the_kept_train_rows(data):
    store, x = data
    cfg = LoaderConfig(batch_size=B, val_fraction=0.1, seed=1)
    train = ActivationLoader(store, 3, cfg, progress=False)
    val = ActivationLoader(store, 3, cfg, split="val", stats=train.stats)
    keep = _expected_keep(x)[0]

    def rows_of(chunks) -> list[bytes]:
        return [x[i].tobytes() for c in chunks for i in range(c * CT, min(N, c * CT + CT)) if keep[i]]

    batches = list(train)
    assert len(batches) == len(train) == train.n_rows // B and all(b.shape == (B, D) for b in batches)
    assert batches[0].dtype == torch.float32 and train.epoch == 1
    got = _keys(batches)
    assert len(set(got)) == len(got) and set(got) <= set(rows_of(train.chunks))
    assert len(rows_of(train.chunks)) - len(got) < B  # only the last partial batch is dropped
    vb = list(val)
    assert len(vb) == len(val) == -(-val.n_rows // B) and len(vb[-1]) == val.n_rows - B * (len(vb) - 1)
    assert _keys(vb) == rows_of(val.chunks)  # validation keeps the stored order
    assert not set(train.chunks) & set(val.chunks)


def test_deterministic_per_seed_and_epoch(data):
    store, _ = data
    cfg = LoaderConfig(batch_size=B, seed=2)
    a, b = ActivationLoader(store, 3, cfg, progress=False), ActivationLoader(store, 3, cfg, progress=False)
    e0a, e0b = list(a), list(b)
    assert all(torch.equal(p, q) for p, q in zip(e0a, e0b))
    e1 = list(a)  # next epoch: another order, the same rows but for the dropped partial batch
    assert not torch.equal(torch.cat(e0a), torch.cat(e1)) and len(e1) == len(e0a)
    assert len(set(_keys(e0a)) & set(_keys(e1))) > len(e1) * B - B
    a.set_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(list(a), e0a))
    other = ActivationLoader(store, 3, LoaderConfig(batch_size=B, seed=3), progress=False)
    assert not torch.equal(torch.cat(list(other))[:B], e0a[0])


@pytest.mark.parametrize("resident", ["no", "yes"])
def test_resume_mid_epoch_is_exact(data, resident):
    store, _ = data
    cfg = LoaderConfig(batch_size=B, seed=4, device_resident=resident)
    full = ActivationLoader(store, 3, cfg, progress=False)
    full.set_epoch(1)
    want = list(full)
    part = ActivationLoader(store, 3, cfg, progress=False, stats=full.stats)
    part.set_epoch(1)
    it = iter(part)
    for _ in range(17):
        next(it)
    state = part.state_dict()
    it.close()
    assert state["epoch"] == 1 and state["batches_done"] == 17
    resumed = ActivationLoader(store, 3, LoaderConfig(batch_size=B, seed=4, device_resident="no"),
                               progress=False, stats=full.stats)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(want) - 17 and all(torch.equal(p, q) for p, q in zip(rest, want[17:]))
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["batches_done"] == 0
    with pytest.raises(StoreError, match="seed=4.*same loader settings"):
        ActivationLoader(store, 3, LoaderConfig(batch_size=B, seed=5), stats=full.stats).load_state_dict(state)


def test_device_resident_matches_streaming(data):
    store, _ = data
    stream = ActivationLoader(store, 3, LoaderConfig(batch_size=B, device_resident="no"), progress=False)
    resident = ActivationLoader(store, 3, LoaderConfig(batch_size=B, device_resident="yes"), progress=False,
                                stats=stream.stats)
    auto = ActivationLoader(store, 3, LoaderConfig(batch_size=B), progress=False, stats=stream.stats)
    assert resident.resident and not stream.resident and not auto.resident  # auto: only on CUDA
    for _ in range(2):
        s, r = list(stream), list(resident)
        assert sorted(_keys(s)) == sorted(_keys(r)) and len(s) == len(r)
        assert all(torch.equal(p, q) for p, q in zip(s, r))  # in fact the same order


def test_dtype_and_leaving_early_stops_the_prefetch_thread(data):
    store, _ = data
    ld = ActivationLoader(store, 3, LoaderConfig(batch_size=B), dtype=torch.bfloat16, progress=False)
    for i, batch in enumerate(ld):
        assert batch.dtype == torch.bfloat16 and batch.shape == (B, D)
        if i == 2:
            break
    assert not [t for t in threading.enumerate() if t.name == "ghosttrack-prefetch"]
    assert ld.epoch == 0 and ld.state_dict()["batches_done"] == 3


def test_nonfinite_rows_stop_training(tmp_path):
    x = np.random.default_rng(1).standard_normal((3 * CT, D)).astype(np.float16)
    x[CT + 5, 2] = np.nan
    x[2 * CT + 1, 0] = np.inf
    store = _write(tmp_path / "bad", x)
    with pytest.raises(StoreError) as e:
        ActivationLoader(store, 3, LoaderConfig(batch_size=B), progress=False)
    assert str(e.value) == (f"layer 3 has 2 rows with NaN/inf (first at rows {CT + 5}, {2 * CT + 1}, chunks 1, 2) "
                            f"in store {store.path}; re-extract with --overwrite")
    stats = scan_layer(store, 3, allow_nonfinite=True, progress=False)
    assert stats.n_nonfinite == 2 and not stats.keep(1)[5] and np.isfinite(stats.median_norm)


def test_config_checks_and_missing_layer(data):
    store, _ = data
    for bad in [dict(batch_size=0), dict(buffer_batches=7), dict(val_fraction=1.0), dict(max_norm_ratio=0),
                dict(device_resident="maybe"), dict(prefetch_chunks=-1)]:
        with pytest.raises(ValueError):
            LoaderConfig(**bad)
    with pytest.raises(StoreError, match="layer 5 is not in store"):
        ActivationLoader(store, 5, LoaderConfig(), progress=False)
    with pytest.raises(ValueError, match="split"):
        ActivationLoader(store, 3, LoaderConfig(), split="test", progress=False)


def test_producer_errors_reach_the_consumer():
    def produce():
        yield 1
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in in_background(produce, depth=2):
            got.append(item)
    assert got == [1] and not [t for t in threading.enumerate() if t.name == "ghosttrack-prefetch"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pinned_and_resident_paths_match_cpu(data):
    store, _ = data
    cfg = dict(batch_size=B, seed=7, val_fraction=0.1)
    cpu = ActivationLoader(store, 3, LoaderConfig(**cfg, device_resident="no"), progress=False)
    want = list(cpu)
    for mode in ("no", "yes", "auto"):
        ld = ActivationLoader(store, 3, LoaderConfig(**cfg, device_resident=mode), device="cuda",
                              stats=cpu.stats, progress=False)
        got = list(ld)
        assert got[0].device.type == "cuda" and len(got) == len(want)
        assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
