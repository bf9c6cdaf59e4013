"""The training path's host syncs and data-parallel reads, before and after issue 10, on this machine:

  syncs / step   sync-prone calls per steady-state step (ghosttrack.train.host_syncs.SyncRecorder:
                 .item/int/float/bool/tolist/numpy, bincount, nonzero, unique, boolean masks, ...)
  trainer        SAETrainer end to end, per steady-state step (median): wall-clock tokens/s, and CPU
                 seconds (the process's time over all threads: on a machine shared with other jobs it
                 tracks the work done far better than the wall clock)
  loader         per data-parallel rank (W = 1, 2, 4; streaming): bytes copied out of the store and
                 rows/s delivered, each rank iterated alone in this process

The baseline is another commit (--baseline), unpacked with `git archive` and put first on
PYTHONPATH in a worker process; the two trees are measured in alternating rounds (median).

    python bench/bench_host_sync.py                  # D=768, H=4096, batch 4096 (CPU)
    python bench/bench_host_sync.py --quick          # D=256, H=1024, batch 1024
    python bench/bench_host_sync.py --device cuda --sync-debug --rounds 1   # GPU: steady steps of the
        # current tree under torch.cuda.set_sync_debug_mode("error"); a host sync there fails the bench

Writes bench/results/host_sync_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from bench_train import machine_name, sae_config, write_store  # noqa: E402

COUNT_SHAPE = dict(d=64, h=256, batch=256)  # the counts do not depend on the shape: count small


def _host_syncs():
    """ghosttrack/train/host_syncs.py of this checkout, whatever tree the worker imports ghosttrack from."""
    spec = importlib.util.spec_from_file_location("host_syncs", ROOT / "ghosttrack" / "train" / "host_syncs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer(store, arch, d, h, k, batch, steps, log_every, out, device, dead_tokens=None, dead_fraction=0.0):
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig
    from ghosttrack.train.config import TrainerConfig
    from ghosttrack.train.trainer import SAETrainer

    per_epoch = len(ActivationLoader(store, 0, LoaderConfig(batch_size=batch), progress=False))
    cfg = TrainerConfig(batch_size=batch, epochs=min(1.0, steps / per_epoch), log_every=log_every,
                        checkpoint_every=10**9, device=device, scale_rows=batch)
    sae = sae_config(arch, d, h, k)
    if arch == "topk" and dead_tokens is not None:
        sae.dead_tokens = dead_tokens
    trainer = SAETrainer(store, 0, sae, cfg, out, progress=False)
    if arch == "topk":  # latents that have not fired for dead_tokens: AuxK works on them, as late in a run
        trainer.tracker.tokens_since_fired_H[:int(dead_fraction * h)] = sae.dead_tokens
    return trainer


def worker(args) -> dict:
    """In the tree on PYTHONPATH: syncs per steady-state step (small shape) and trainer tok/s."""
    from ghosttrack.store.reader import ActivationStore

    if args.device == "cpu":  # one thread: CPU time then measures work, not the spin-waits of idle OpenMP threads
        torch.set_num_threads(1)
    host_syncs = _host_syncs()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        c = COUNT_SHAPE
        write_store(tmp / "small", c["d"], c["batch"] * 40, chunk=1024)
        write_store(tmp / "big", args.d, args.batch * (args.steps + 16), chunk=max(1024, args.batch // 2))
        small, big = ActivationStore.open(tmp / "small"), ActivationStore.open(tmp / "big")
        for arch in args.archs:
            trainer = _trainer(small, arch, c["d"], c["h"], 8, c["batch"], 30, 10, tmp / f"c_{arch}", args.device,
                               dead_tokens=2 * c["batch"])  # AuxK with latents dying during the count
            per_step = {}
            with host_syncs.SyncRecorder() as rec:
                trainer.run(on_step=lambda s: per_step.__setitem__(s, rec.take()))
            steady = [len(v) for s, v in per_step.items() if s % 10 and s % trainer.steps_per_epoch not in (0, 1)]
            trainer = _trainer(big, arch, args.d, args.h, args.k, args.batch, args.steps, 4, tmp / f"t_{arch}",
                               args.device, dead_fraction=args.dead_fraction)
            guard = (host_syncs.cuda_sync_errors_on_steady_steps(trainer)
                     if args.sync_debug and args.device.startswith("cuda") else None)
            clock = {0: (time.perf_counter(), time.process_time())}

            def on_step(step):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                clock[step] = (time.perf_counter(), time.process_time())
                if guard is not None:
                    guard(step)  # a host sync in a steady-state step raises
            try:
                trainer.run(on_step=on_step)
            finally:
                if guard is not None:
                    torch.cuda.set_sync_debug_mode("default")
            timed = [s for s in clock if s > 1 and host_syncs.is_steady_step(
                s, log_every=4, steps_per_epoch=trainer.steps_per_epoch, total_steps=trainer.total_steps)]
            wall = statistics.median(clock[s][0] - clock[s - 1][0] for s in timed)
            cpu = statistics.median(clock[s][1] - clock[s - 1][1] for s in timed)
            out[arch] = {"syncs_per_step": statistics.median(steady), "trainer_tok_s": args.batch / wall,
                         "cpu_s_per_step": cpu}
    return out


def loader_per_rank(d: int, batch: int, n_batches: int) -> list[dict]:
    """Bytes and rows/s of each rank's epoch for W = 1, 2, 4 (streaming from the memory-mapped store)."""
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig
    from ghosttrack.store.reader import ActivationStore

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp) / "s", d, batch * n_batches, chunk=max(1024, batch // 2))
        store = ActivationStore.open(Path(tmp) / "s")
        cfg = LoaderConfig(batch_size=batch, device_resident="no", val_fraction=0.0)
        for world in (1, 2, 4):
            for rank in range(world):
                ld = ActivationLoader(store, 0, cfg, progress=False, rank=rank, world=world)
                t = time.perf_counter()
                n = sum(len(x) for x in ld)
                seconds = time.perf_counter() - t
                rows.append({"world": world, "rank": rank, "rows": n, "bytes_read": ld.bytes_read,
                             "rows_per_s": n / seconds})
    return rows


def unpack(commit: str, into: Path) -> Path:
    """The commit's ghosttrack package laid out for PYTHONPATH (store/ and kernels/ inside it)."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ghosttrack", "store", "kernels"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = into / "pkg"
    shutil.copytree(src / "ghosttrack", pkg / "ghosttrack")
    shutil.copytree(src / "store", pkg / "ghosttrack" / "store")
    shutil.copytree(src / "kernels", pkg / "ghosttrack" / "kernels")
    return pkg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="trainer steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--archs", default="relu,topk")
    p.add_argument("--dead-fraction", type=float, default=0.05,
                   help="topk: share of the latents dead (not fired for dead_tokens, default 200k) at the start")
    p.add_argument("--baseline", default="e3f1189", help="commit to compare with (before issue 10's changes)")
    p.add_argument("--quick", action="store_true", help="D=256, H=1024, batch 1024")
    p.add_argument("--tag", default=None, help="results file suffix (default: cpu or gpu)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda")
    p.add_argument("--sync-debug", action="store_true",
                   help="CUDA: this tree's steady-state trainer steps run under set_sync_debug_mode('error')")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.d, args.h, args.batch = 256, 1024, 1024
    args.archs = args.archs.split(",")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    forwarded = ["--d", str(args.d), "--h", str(args.h), "--batch", str(args.batch), "--k", str(args.k),
                 "--steps", str(args.steps), "--archs", ",".join(args.archs), "--device", args.device,
                 "--dead-fraction", str(args.dead_fraction), "--worker"]
    with tempfile.TemporaryDirectory() as tmp:
        # "after" is the installed (editable) checkout; "before" shadows it from PYTHONPATH.
        trees = {"before": str(unpack(args.baseline, Path(tmp) / "before")), "after": None}
        runs = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, path in trees.items():
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                if path is not None:
                    env["PYTHONPATH"] = path
                extra = ["--sync-debug"] if args.sync_debug and path is None else []
                done = subprocess.run([sys.executable, __file__, *forwarded, *extra], env=env, capture_output=True,
                                      text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name} worker failed:\n{done.stderr[-3000:]}")
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(name, runs[name][-1], file=sys.stderr)
    summary = {name: {arch: {key: statistics.median(r[arch][key] for r in rs) for key in rs[0][arch]}
                      for arch in args.archs} for name, rs in runs.items()}
    device = torch.device(args.device)
    results = {"machine": machine_name(device), "sync_debug": bool(args.sync_debug and device.type == "cuda"), "torch": torch.__version__, "d": args.d, "h": args.h,
               "batch": args.batch, "k": args.k, "dead_fraction": args.dead_fraction, "baseline": args.baseline, "rounds": args.rounds,
               "command": " ".join(sys.argv[1:]), "summary": summary, "runs": runs,
               "loader": loader_per_rank(args.d, args.batch, 16)}
    report(results, args.tag or ("cpu" if device.type == "cpu" else "gpu"))


def report(r: dict, tag: str) -> None:
    s = r["summary"]
    lines = [f"# Host syncs and data-parallel reads ({r['machine']})", "",
             f"D={r['d']}, H={r['h']}, batch {r['batch']}, k={r['k']} (topk: {r['dead_fraction']:.0%} of the latents "
             f"dead at the start, dead_tokens 200k, log every 4 steps), float32, "
             f"{'one intra-op thread, ' if 'no GPU' in r['machine'] else ''}"
             f"{'steady steps under set_sync_debug_mode(error) (passed), ' if r['sync_debug'] else ''}"
             f"torch {r['torch']}; before = commit {r['baseline']}, after = this tree; median of {r['rounds']} "
             f"alternating rounds. Command: `python bench/bench_host_sync.py {r['command']}`.", "",
             "| arch | syncs / step before | after | tok/s before | after | CPU s / step before | after "
             "| CPU time after / before |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arch in s["after"]:
        b, a = s["before"][arch], s["after"][arch]
        lines.append(f"| {arch} | {b['syncs_per_step']:g} | {a['syncs_per_step']:g} | {b['trainer_tok_s']:,.0f} "
                     f"| {a['trainer_tok_s']:,.0f} | {b['cpu_s_per_step']:.3f} | {a['cpu_s_per_step']:.3f} "
                     f"| {a['cpu_s_per_step'] / b['cpu_s_per_step']:.2f} |")
    lines += ["", "Loader per data-parallel rank (streaming, one epoch, each rank alone in one process):", "",
              "| W | rank | rows | MB read | bytes read / row delivered | share of the W ranks' bytes | rows/s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in r["loader"]:
        all_ranks = sum(y["bytes_read"] for y in r["loader"] if y["world"] == x["world"])
        lines.append(f"| {x['world']} | {x['rank']} | {x['rows']:,} | {x['bytes_read'] / 1e6:,.1f} "
                     f"| {x['bytes_read'] / x['rows']:,.0f} | {x['bytes_read'] / all_ranks:.3f} | {x['rows_per_s']:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = BENCH / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"host_sync_{tag}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / f"host_sync_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
