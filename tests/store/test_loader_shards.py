"""Data-parallel loaders: rank r of W gets rows [r*B, (r+1)*B) of each global batch of one process
with batch W*B, reads only those rows (1/W of the bytes), and resumes only with the same W."""
import numpy as np
import pytest
import torch

from ghosttrack.store.errors import StoreError
from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS
from ghosttrack.store.writer import StoreWriter

D, CT, B = 12, 64, 16
N = 20 * CT + 23  # 21 chunks, the last one partial


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float16)
    idx = np.arange(N)
    path = tmp_path_factory.mktemp("shards") / "s"
    with StoreWriter.open(path, layers=[3], d_model=D, target_tokens=N, chunk_tokens=CT,
                          attrs={**SYNTHETIC_ATTRS, "context_length": 8}) as w:
        w.append({3: x}, idx.astype(np.int32), (idx % 8).astype(np.int32), idx // 8)
        w.close(complete=True)
    return ActivationStore.open(path)


def _loader(store, split, world, rank=0, resident="no", **kw):
    cfg = LoaderConfig(batch_size=B, val_fraction=0.2, seed=5, device_resident=resident, **kw)
    return ActivationLoader(store, 3, cfg, split=split, progress=False, rank=rank, world=world)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("resident", ["no", "yes"])
def test_ranks_split_the_global_batches_and_read_only_their_rows(store, world, resident):
    for split in ("train", "val"):
        whole = ActivationLoader(store, 3, LoaderConfig(batch_size=B * world, val_fraction=0.2, seed=5),
                                 split=split, progress=False)
        want = list(whole)
        ranks = [_loader(store, split, world, r, resident) for r in range(world)]
        got = [list(ld) for ld in ranks]
        for r, ld in enumerate(ranks):
            assert len(got[r]) == len(ld)
        # Step i of every rank together is global batch i, in rank order.
        for i, batch in enumerate(want):
            parts = [g[i] for g in got if i < len(g)]
            assert torch.equal(torch.cat(parts), batch), (split, i)
        assert sum(len(g) for g in got) >= len(want) and max(len(g) for g in got) == len(want)
        if resident == "no":  # a streaming rank copies only its own rows out of the store
            for r, ld in enumerate(ranks):
                assert ld.bytes_read == sum(len(b) for b in got[r]) * D * 2
            if split == "train":  # every global batch is full: exactly 1/W of one process's bytes each
                assert all(ld.bytes_read * world == whole.bytes_read for ld in ranks)


def test_resume_of_a_rank_is_exact_and_needs_the_same_world(store):
    full = _loader(store, "train", 2, rank=1)
    want = list(full)
    part = _loader(store, "train", 2, rank=1)
    it = iter(part)
    for _ in range(5):
        next(it)
    state = part.state_dict()
    it.close()
    # Rank 0 saves the state; every rank resumes from it at the same global batch.
    resumed = _loader(store, "train", 2, rank=1, resident="yes")
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(want) - 5 and all(torch.equal(p, q) for p, q in zip(rest, want[5:]))
    with pytest.raises(StoreError, match="saved by 2 processes, this loader is one of 3"):
        _loader(store, "train", 3).load_state_dict(state)
    with pytest.raises(ValueError, match="rank must be in"):
        _loader(store, "train", 2, rank=2)
