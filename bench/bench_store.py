"""Store throughput against bare numpy, side by side in one run.

- write: StoreWriter (appends of --append-rows rows, per-chunk atomic files with a CRC-32C, a
  commit per chunk) vs the same writer on arrays without the checksum codec (format 1: the cost of
  the checksum) vs ndarray.tofile of the same bytes per chunk, each into a fresh folder after an
  os.sync(); on the scratch disk, and on tmpfs (/dev/shm) where the kernel's writeback cannot stall;
- read: ActivationStore.read_chunk (memmap fast path) of a fresh store that checks every chunk's
  bound checksum (the default) vs one opened with trust=True (--trust-store) vs a bare numpy.memmap
  of the same chunk files, all copied into one preallocated buffer (page cache warm); scan_layer
  checked vs trusted;
- verify: verify_store (every chunk file read, CRC-32C and finite values checked) vs reading the
  same files into memory with numpy (page cache warm);
- loader: ActivationLoader rows/s (shuffled across chunks, filtered, float32 batches), streaming
  and device-resident, vs reading the same chunks through a bare memmap in order, batch by batch,
  with the same float32 conversion.

Median of --repeats, orders alternated. Prints a Markdown table and writes
bench/results/store_<cpu|cuda>[_quick].{json,md}.
Run: .venv/bin/python bench/bench_store.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import google_crc32c
import numpy as np
import torch
import zarr

from ghosttrack.store import format as fmt
from ghosttrack.store.loader import ActivationLoader, LoaderConfig
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store.stats import scan_layer
from ghosttrack.store.synthetic import SYNTHETIC_ATTRS, synthetic_rows
from ghosttrack.store.verify import verify_store
from ghosttrack.store.writer import StoreWriter

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


def commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()} ({os.cpu_count()}-core {platform.machine()} host)"
    return f"CPU: {os.cpu_count()}-core {platform.machine()} (no GPU)"


def alternate(fns: dict, repeats: int, before=None, cpu: dict | None = None) -> dict[str, list[float]]:
    """Wall seconds of each function per repeat, the order reversed every other repeat; the CPU
    seconds of this process go into ``cpu`` (steadier than wall time on a shared machine)."""
    times = {k: [] for k in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if before:
                before(name)
            t, c = time.perf_counter(), time.process_time()
            fns[name]()
            times[name].append(time.perf_counter() - t)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c)
    return times


def rates(amount, times: dict[str, list[float]]) -> dict:
    """Median and best rate per contender."""
    return {k: {"median": amount / statistics.median(v), "best": amount / min(v),
                "seconds": [round(t, 4) for t in v]} for k, v in times.items()}


@contextlib.contextmanager
def without_checksums():
    """Arrays created as in format 1 (no crc32c codec): the writer then writes no checksum."""
    real = fmt.Crc32cCodec
    fmt.Crc32cCodec = lambda: ()  # noqa: E731  (compressors=() in _create_array)
    try:
        yield
    finally:
        fmt.Crc32cCodec = real


def bench_write(root: Path, acts: dict[int, np.ndarray], rows: tuple, ct: int, piece: int, repeats: int):
    n, d = next(iter(acts.values())).shape
    arrays = list(acts.values()) + list(rows)

    def store(name="store"):
        with StoreWriter.open(root / name, layers=list(acts), d_model=d, target_tokens=n, chunk_tokens=ct,
                              attrs=SYNTHETIC_ATTRS) as w:
            for a in range(0, n, piece):
                w.append({i: x[a:a + piece] for i, x in acts.items()}, *(r[a:a + piece] for r in rows))
            w.close(complete=True)

    def store_no_checksum():
        with without_checksums():
            store("store_no_checksum")

    def raw():  # the same bytes as the store's chunk files: the last chunk zero-padded too
        (root / "raw").mkdir()
        for c in range(-(-n // ct)):
            for k, arr in enumerate(arrays):
                part = arr[c * ct:(c + 1) * ct]
                if len(part) < ct:
                    part = np.concatenate([part, np.zeros((ct - len(part),) + arr.shape[1:], arr.dtype)])
                part.tofile(root / "raw" / f"{k}_{c}")

    def fresh(name: str) -> None:
        shutil.rmtree(root / name, ignore_errors=True)
        os.sync()  # earlier runs' dirty pages are not flushed on this run's clock

    cpu: dict[str, list[float]] = {}
    times = alternate({"store": store, "store_no_checksum": store_no_checksum, "raw": raw}, repeats, before=fresh,
                      cpu=cpu)
    assert fmt.has_checksum(zarr.open_group(root / "store", mode="r")["tokens"])
    assert not fmt.has_checksum(zarr.open_group(root / "store_no_checksum", mode="r")["tokens"])
    nbytes = sum(a.itemsize * (a.size // len(a)) * -(-n // ct) * ct for a in arrays)  # as on disk
    return nbytes, times, {k: statistics.median(v) for k, v in cpu.items()}


def bench_crc(arrays: list[np.ndarray], repeats: int) -> float:
    """GB/s of CRC-32C alone over the written arrays (what the checksum adds to a write)."""
    views = []
    for a in arrays:
        v = a.view()
        v.flags.writeable = False
        views.append(v)
    nbytes = sum(a.nbytes for a in arrays)
    times = alternate({"crc": lambda: [google_crc32c.value(v) for v in views]}, repeats)["crc"]
    return nbytes / statistics.median(times) / GB


def bench_read(path: Path, layer: int, repeats: int):
    """Every chunk of a layer read once, copied into one buffer: through a freshly opened store that
    checks each chunk's bound checksum (the default), one that trusts the store (--trust-store), and a
    bare numpy.memmap of the same files. A fresh store per pass: each checks every chunk once."""
    store = ActivationStore.open(path)
    dst = np.empty((store.chunk_tokens, store.d_model), np.float16)
    files = [str(store.chunk_file(layer, c)) for c in range(store.n_chunks)]

    def read_all(trust: bool):
        s = ActivationStore.open(path, trust=trust)
        for c in range(s.n_chunks):
            x = s.read_chunk(layer, c)
            np.copyto(dst[:len(x)], x)

    def bare_memmap():
        for c, f in enumerate(files):
            lo, hi = store.chunk_bounds(c)
            np.copyto(dst[:hi - lo], np.memmap(f, dtype=np.float16, mode="r", shape=dst.shape)[:hi - lo])

    bare_memmap()  # warm the page cache
    times = alternate({"verified": lambda: read_all(False), "trusted": lambda: read_all(True),
                       "bare_memmap": bare_memmap}, repeats)
    return store.n_tokens * store.d_model * 2, times


def bench_scan(path: Path, layer: int, repeats: int):
    """scan_layer (the first pass of train over a layer: it reads every chunk) on a fresh store that
    checks every chunk vs one that trusts the store."""
    n = ActivationStore.open(path).n_tokens

    def scan(trust: bool):
        scan_layer(ActivationStore.open(path, trust=trust), layer, progress=False)

    times = alternate({"verified": lambda: scan(False), "trusted": lambda: scan(True)}, repeats)
    return n * ActivationStore.open(path).d_model * 2, times


def bench_verify(path: Path, repeats: int):
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and "/c/" in str(p)
                   and not p.relative_to(path).parts[0] == "checksums")  # verify counts data bytes
    nbytes = sum(os.path.getsize(f) for f in files)
    buf = np.empty(max(os.path.getsize(f) for f in files), np.uint8)
    reports = []

    def bare_read():
        for f in files:
            m = np.memmap(f, dtype=np.uint8, mode="r")
            np.copyto(buf[:len(m)], m)

    bare_read()  # warm the page cache
    times = alternate({"verify_store": lambda: reports.append(verify_store(path)), "bare_read": bare_read}, repeats)
    assert all(r.healthy and r.bytes_read == nbytes for r in reports)
    return nbytes, times


def bench_loader(store: ActivationStore, layer: int, batch: int, repeats: int):
    t = time.perf_counter()
    stats = scan_layer(store, layer, progress=False)
    scan_gbps = store.n_tokens * store.d_model * 2 / (time.perf_counter() - t) / GB
    loaders = {mode: ActivationLoader(store, layer, LoaderConfig(batch_size=batch, val_fraction=0.0,
                                                                 device_resident=mode),
                                      stats=stats, progress=False) for mode in ("no", "yes")}
    files = [str(store.chunk_file(layer, c)) for c in range(store.n_chunks)]
    counts = {}

    def run(name, ld):
        counts[name] = sum(len(x) for x in ld)

    def bare_memmap():  # in order, no filtering: the same page reads and the same fp32 conversion
        n = 0
        for c, f in enumerate(files):
            lo, hi = store.chunk_bounds(c)
            m = np.memmap(f, dtype=np.float16, mode="r", shape=(store.chunk_tokens, store.d_model))[:hi - lo]
            for i in range(0, hi - lo, batch):
                n += len(torch.from_numpy(np.array(m[i:i + batch])).float())
        counts["bare_memmap"] = n

    run("resident", loaders["yes"])  # loads the split into memory once, outside the clock
    times = alternate({"streaming": lambda: run("streaming", loaders["no"]),
                       "resident": lambda: run("resident", loaders["yes"]), "bare_memmap": bare_memmap}, repeats)
    out = {k: rates(counts[k], {k: v})[k] for k, v in times.items()}
    return out, scan_gbps, stats.n_kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds, not a minute)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--tmp", default=None, help="scratch folder on the disk to measure (default: system temp)")
    ap.add_argument("--append-rows", type=int, default=16384,
                    help="rows per StoreWriter.append (an extraction batch: e.g. 32 sequences x 512 tokens)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a small shared box more threads oversubscribe)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, layers = 576, [3, 9]
    ct, n_chunks, batch = (16384, 4, 2048) if args.quick else (65536, 6, 4096)
    repeats = args.repeats or (3 if args.quick else 5)
    n = ct * n_chunks - ct // 3  # a partial last chunk, as in real runs
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    acts = {i: rng.standard_normal((n, d), dtype=np.float32).astype(np.float16) for i in layers}
    rows = synthetic_rows(0, n, 256)
    scratch = {"disk": Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.tmp))}
    if Path("/dev/shm").is_dir():
        scratch["tmpfs"] = Path(tempfile.mkdtemp(prefix="bench_store_", dir="/dev/shm"))
    write, write_cpu = {}, {}
    try:
        for where, root in scratch.items():
            w_bytes, t, write_cpu[where] = bench_write(root, acts, rows, ct, args.append_rows, repeats)
            write[where] = rates(w_bytes / GB, t)
        crc_gbps = bench_crc(list(acts.values()) + list(rows), repeats)
        store = ActivationStore.open(scratch["disk"] / "store")
        r_bytes, t = bench_read(scratch["disk"] / "store", layers[0], repeats)
        read = rates(r_bytes / GB, t)
        scan = rates(r_bytes / GB, bench_scan(scratch["disk"] / "store", layers[0], repeats)[1])
        v_bytes, t = bench_verify(scratch["disk"] / "store", repeats)
        verify = rates(v_bytes / GB, t)
        loader, scan_gbps, n_kept = bench_loader(store, layers[0], batch, repeats)
    finally:
        for root in scratch.values():
            shutil.rmtree(root, ignore_errors=True)
    ratio = lambda x, a, b: x[a]["median"] / x[b]["median"]  # noqa: E731
    res = {
        "command": "python bench/bench_store.py " + " ".join(sys.argv[1:]), "commit": commit(),
        "machine": machine(), "torch": torch.__version__, "numpy": np.__version__, "quick": args.quick,
        "torch_threads": args.threads, "load_avg_1min_at_start": load, "repeats": repeats,
        "scratch": {k: str(v.parent) for k, v in scratch.items()},
        "sizes": {"n_tokens": n, "d_model": d, "layers": len(layers), "chunk_tokens": ct,
                  "append_rows": args.append_rows, "loader_batch": batch, "write_bytes": w_bytes,
                  "read_bytes": r_bytes, "verify_bytes": v_bytes, "loader_rows_kept": n_kept},
        "write_GBps": write, "write_cpu_seconds_median": write_cpu, "crc32c_GBps": crc_gbps,
        "read_GBps": read, "scan_GBps": scan, "verify_GBps": verify, "loader_rows_per_s": loader, "scan_layer_GBps": scan_gbps,
        "ratios": {f"write_{k}": ratio(v, "store", "raw") for k, v in write.items()}
        | {f"write_{k}_checksum_cost": ratio(v, "store", "store_no_checksum") for k, v in write.items()}
        | {f"write_{k}_checksum_cpu": c["store"] / c["store_no_checksum"] for k, c in write_cpu.items()}
        | {"verify": ratio(verify, "verify_store", "bare_read"),
           "read": ratio(read, "trusted", "bare_memmap"),
           "read_verified": ratio(read, "verified", "trusted"),
           "scan_verified": ratio(scan, "verified", "trusted"),
           "loader_streaming": ratio(loader, "streaming", "bare_memmap"),
           "loader_resident": ratio(loader, "resident", "bare_memmap")},
        "targets": {"write": 0.8, "read": 0.9, "read_verified": 0.8},
    }
    md = render(res)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = ("store_cuda" if torch.cuda.is_available() else "store_cpu") + ("_quick" if args.quick else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)


def render(res: dict) -> str:
    s, q = res["sizes"], res["ratios"]
    m = lambda x: x["median"]  # noqa: E731
    w, r, lo, v = res["write_GBps"], res["read_GBps"], res["loader_rows_per_s"], res["verify_GBps"]
    lines = [
        f"# Store throughput ({res['machine']}; CPU figures)",
        "",
        f"`{res['command']}` at commit {res['commit']}.",
        "",
        f"{s['n_tokens']:,} tokens x d_model {s['d_model']} fp16, {s['layers']} layers + token/position/sequence "
        f"arrays ({s['write_bytes'] / GB:.2f} GB written per run), chunks of {s['chunk_tokens']:,} tokens, "
        f"appends of {s['append_rows']:,} rows, loader batches of {s['loader_batch']:,}; median of "
        f"{res['repeats']} (orders alternated); torch threads {res['torch_threads']}; reads with the page cache "
        f"warm; 1-min load average at start {res['load_avg_1min_at_start']:.1f}.",
        "",
        "| what | GhostTrack | bare numpy | ratio | target |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for where, x in w.items():
        lines.append(f"| write to {where} ({res['scratch'][where]}), GB/s | {m(x['store']):.2f} | "
                     f"{m(x['raw']):.2f} (tofile per chunk) | {q['write_' + where]:.2f}x | >= 0.8x |")
    for where, x in w.items():
        lines.append(f"| write to {where}, with vs without CRC-32C, GB/s | {m(x['store']):.2f} | "
                     f"{m(x['store_no_checksum']):.2f} (GhostTrack, no checksum) | "
                     f"{q['write_' + where + '_checksum_cost']:.2f}x | - |")
    for where, c in res["write_cpu_seconds_median"].items():
        lines.append(f"| write to {where}, CPU seconds, with vs without CRC-32C | {c['store']:.2f} | "
                     f"{c['store_no_checksum']:.2f} (GhostTrack, no checksum) | "
                     f"{q['write_' + where + '_checksum_cpu']:.2f}x | - |")
    lines += [
        f"| CRC-32C alone (google-crc32c) over the written bytes, GB/s | {res['crc32c_GBps']:.1f} | | | |",
        f"| verify_store (CRC-32C + finite values), GB/s | {m(v['verify_store']):.2f} | {m(v['bare_read']):.2f} "
        f"(read every file) | {q['verify']:.2f}x | - |",
        f"| chunk read, --trust-store, GB/s | {m(r['trusted']):.2f} | {m(r['bare_memmap']):.2f} (numpy.memmap) | "
        f"{q['read']:.2f}x | >= 0.9x |",
        f"| chunk read, checked (default) vs --trust-store, GB/s | {m(r['verified']):.2f} | "
        f"{m(r['trusted']):.2f} (GhostTrack, trusted) | {q['read_verified']:.2f}x | >= 0.8x |",
        f"| scan_layer, checked vs --trust-store, GB/s | {m(res['scan_GBps']['verified']):.2f} | "
        f"{m(res['scan_GBps']['trusted']):.2f} (GhostTrack, trusted) | {q['scan_verified']:.2f}x | - |",
        f"| loader, streaming, rows/s | {m(lo['streaming']):,.0f} | {m(lo['bare_memmap']):,.0f} "
        f"(memmap in order, fp32) | {q['loader_streaming']:.2f}x | - |",
        f"| loader, device-resident, rows/s | {m(lo['resident']):,.0f} | {m(lo['bare_memmap']):,.0f} | "
        f"{q['loader_resident']:.2f}x | - |",
        f"| scan_layer (one pass), GB/s | {res['scan_layer_GBps']:.2f} | | | |",
        "",
        "Best of the repeats (GB/s, store / raw): "
        + "; ".join(f"{k} {x['store']['best']:.2f} / {x['raw']['best']:.2f}" for k, x in w.items())
        + ". The loader shuffles across chunks (random row gathers from the page cache) and skips flagged "
          "and outlier rows; the bare baseline reads every row in order.",
        "",
        "Spread of the write runs (wall seconds, min-max, every contender): "
        + "; ".join(f"{k} {min(min(c['seconds']) for c in x.values()):.2f}-"
                    f"{max(max(c['seconds']) for c in x.values()):.2f} s" for k, x in w.items())
        + ". Where the spread is wide the machine's load and the kernel's writeback decide the wall figures; "
          "the CPU-second rows and CRC-32C alone show the checksum's own cost.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
