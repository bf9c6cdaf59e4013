"""Loader throughput from an S3-compatible server against local disk: the same store, one run.

The store is written once to local disk and its files uploaded unchanged under an s3:// prefix
of a moto server started here, in its own process, on 127.0.0.1 (nothing else is reached). For
each source, timed in alternation, median of the repeats:

- read: every chunk of one layer in order (``read_chunk``), with the reads started ahead as the
  loader starts them (memory map + OS read-ahead locally; concurrent GETs remotely);
- scan: ``scan_layer`` (the norm scan that every ActivationLoader runs once);
- epoch: one shuffled training epoch of ActivationLoader (float32 CPU batches), scan excluded.

"s3, no read-ahead" is the same S3 store with ``prefetch_chunks=0`` and no ``read_ahead`` calls:
what the background GETs buy.

A local moto server is not a real object store (no network, one Python process serving), so the
ratio says what our fetch path costs on top of the bytes, not what S3 will deliver.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import machine  # noqa: E402

from ghosttrack.store.loader import ActivationLoader, LoaderConfig  # noqa: E402
from ghosttrack.store.location import as_location, upload_folder  # noqa: E402
from ghosttrack.store.reader import ActivationStore  # noqa: E402
from ghosttrack.store.stats import scan_layer  # noqa: E402
from ghosttrack.store.synthetic import write_synthetic_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def start_server() -> subprocess.Popen:
    """moto's S3 server in its own process (as a remote server would be: it takes no GIL from us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true", NO_PROXY="127.0.0.1")
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(300):  # up to 30 s for the server to listen
        try:
            client.create_bucket(Bucket="bench")
            return server
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto server did not start")


def bench(sources: dict[str, tuple[str, int]], layer: int, cfg: LoaderConfig, repeats: int) -> dict:
    """sources: name -> (URL, chunks read ahead)."""
    first = ActivationStore.open(next(iter(sources.values()))[0])
    stats = scan_layer(first, layer, max_norm_ratio=cfg.max_norm_ratio, progress=False)
    times: dict[str, list[float]] = {}

    def read(store, ahead_n):
        for c in range(store.n_chunks):
            for ahead in range(c + 1, min(c + ahead_n + 1, store.n_chunks)):
                store.read_ahead(layer, ahead)
            np.asarray(store.read_chunk(layer, c)).sum(dtype=np.float32)  # touch every byte

    for _ in range(repeats):
        for name, (url, ahead_n) in sources.items():
            store = ActivationStore.open(url)  # fresh: no chunk already fetched
            t = time.perf_counter()
            read(store, ahead_n)
            times.setdefault(f"read_{name}", []).append(time.perf_counter() - t)
            if ahead_n:  # scan_layer always reads ahead on an object store
                t = time.perf_counter()
                scan_layer(ActivationStore.open(url), layer, max_norm_ratio=cfg.max_norm_ratio, progress=False)
                times.setdefault(f"scan_{name}", []).append(time.perf_counter() - t)
            loader = ActivationLoader(ActivationStore.open(url), layer, replace(cfg, prefetch_chunks=ahead_n),
                                      stats=stats, progress=False)
            t = time.perf_counter()
            n = sum(len(b) for b in loader)
            times.setdefault(f"epoch_{name}", []).append(time.perf_counter() - t)
    mb = first.n_tokens * first.d_model * first.layer_dtype.itemsize / 1e6
    rows = stats.n_kept
    out = {}
    for key, ts in times.items():
        med = statistics.median(ts)
        amount = n if key.startswith("epoch") else mb
        out[key] = {"median_s": med, "times_s": ts,
                    ("rows_per_s" if key.startswith("epoch") else "MB_per_s"): amount / med}
    out["epoch_rows"] = n
    out["kept_rows"] = rows
    out["layer_MB"] = mb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small store (seconds)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, ct, n_chunks = (256, 2048, 12) if args.quick else (768, 4096, 24)
    n = ct * n_chunks - ct // 3
    load = os.getloadavg()[0]
    server = start_server()
    with tempfile.TemporaryDirectory(prefix="bench_loader_remote_") as tmp:
        local = Path(tmp) / "store"
        write_synthetic_store(local, layers=[0], d_model=d, n_tokens=n, chunk_tokens=ct, context_length=256)
        remote = "s3://bench/store"
        upload_folder(local, as_location(remote))
        cfg = LoaderConfig(batch_size=2048, val_fraction=0.0, max_norm_ratio=3.0, prefetch_chunks=2,
                           device_resident="no")
        try:
            res = bench({"disk": (str(local), cfg.prefetch_chunks), "s3": (remote, cfg.prefetch_chunks),
                         "s3_no_ahead": (remote, 0)}, 0, cfg, args.repeats)
        finally:
            server.kill()
    res["setup"] = {"machine": machine(), "load_1min_before": load, "d_model": d, "chunk_tokens": ct,
                    "chunks": n_chunks, "rows": n, "batch": cfg.batch_size, "prefetch_chunks": cfg.prefetch_chunks,
                    "repeats": args.repeats, "server": "moto's server in its own process on 127.0.0.1"}
    md = render(res)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "loader_remote_cpu" + ("_quick" if args.quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)


def render(res: dict) -> str:
    s = res["setup"]
    lines = [f"# Loader from a local S3 server vs local disk ({s['machine']})", "",
             f"One fp16 layer of {s['rows']:,} rows x {s['d_model']} ({res['layer_MB']:.0f} MB) in {s['chunks']} "
             f"chunks of {s['chunk_tokens']:,} rows; the same bytes on disk and on {s['server']}. Median of "
             f"{s['repeats']} alternated runs; 1-min load average before: {s['load_1min_before']:.1f}.", "",
             "| what | disk | S3 (moto) | S3, no read-ahead | S3 / disk | read-ahead gain |",
             "|---|---|---|---|---|---|"]
    for kind, unit, label in (("read", "MB_per_s", "chunks in order, MB/s"), ("scan", "MB_per_s", "scan_layer, MB/s"),
                              ("epoch", "rows_per_s", "loader epoch, rows/s")):
        disk, s3 = res[f"{kind}_disk"][unit], res[f"{kind}_s3"][unit]
        plain = res.get(f"{kind}_s3_no_ahead", {}).get(unit)
        lines.append(f"| {label} | {disk:,.0f} | {s3:,.0f} | {f'{plain:,.0f}' if plain else '-'} | {s3 / disk:.2f}x | "
                     f"{f'{s3 / plain:.2f}x' if plain else '-'} |")
    lines += ["", f"Read-ahead: {s['prefetch_chunks']} chunks (the loader's prefetch_chunks), fetched on a "
              "4-thread pool while the current chunk is used. moto is one Python process on the same 2 cores, "
              "so these numbers are a floor for the fetch path, not a forecast for a real bucket.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
