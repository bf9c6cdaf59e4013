"""A store written with dtype float32 (`extract --store-dtype fp32`) records it, and the reader, the scan
and the loader (streamed and device-resident) hand out its values unrounded, beyond fp16's range too."""
import numpy as np
import pytest
import torch

from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import scan_layer
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS
from ghosttrack.store.verify import verify_store
from ghosttrack.store.writer import StoreWriter

N, D, CHUNK = 2048, 12, 256


@pytest.fixture(scope="module")
def fp32_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "store"
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N, D)) * 1e5).astype(np.float32)  # far beyond fp16's +-65504
    x += np.float32(1e-3)  # and digits fp16 would round away
    with StoreWriter.open(path, layers=[3], d_model=D, target_tokens=N, chunk_tokens=CHUNK, attrs=SYNTHETIC_ATTRS,
                          dtype="float32") as w:
        w.append({3: x}, np.arange(N, dtype=np.int32), (np.arange(N) % 64).astype(np.int32), np.arange(N) // 64)
        w.close(complete=True)
    return path, x


def test_reader_and_verify_see_float32(fp32_store):
    path, x = fp32_store
    store = ActivationStore.open(path)
    assert store.attrs["dtype"] == "float32" and store.layer_dtype == np.float32
    np.testing.assert_array_equal(store.read_rows(3, 0, N), x)
    assert verify_store(path).healthy


@pytest.mark.parametrize("resident", ["no", "yes"])
def test_loader_batches_are_the_stored_float32_rows(fp32_store, resident):
    path, x = fp32_store
    store = ActivationStore.open(path)
    cfg = LoaderConfig(batch_size=128, val_fraction=0.0, max_norm_ratio=None, skip_flagged=False,
                       device_resident=resident)
    stats = scan_layer(store, 3, skip_flagged=False, max_norm_ratio=None, progress=False)
    loader = ActivationLoader(store, 3, cfg, stats=stats, progress=False)
    rows = torch.cat(list(loader)).numpy()
    assert rows.dtype == np.float32 and np.isfinite(rows).all()
    # Every batch row is one stored row, exactly (no trip through fp16).
    got = {r.tobytes() for r in rows}
    assert got <= {r.tobytes() for r in x} and len(got) == len(rows)
