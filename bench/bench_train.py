"""Training throughput, side by side on the same activations, in one run:

  loader   ActivationLoader alone: batches of the layer delivered to the device, nothing else
  step     the bare SAE step with the data already on the device: training_loss + backward + Adam
  trainer  SAETrainer end to end (loader + step + decoder renorm + clipping + schedule + metrics)

Target: trainer >= 0.9 x min(step, loader). With --peers-python (a venv with sae-lens and
eai-sparsify, and ghosttrack installed --no-deps), the same bare step is timed there in SAELens and
sparsify at the same architecture, width, batch and dtype, next to ours in the same process.

    python bench/bench_train.py                      # CPU: D=768, H=4096, batch 4096
    python bench/bench_train.py --quick              # small shapes, a few seconds
    python bench/bench_train.py --peers-python /work/peers-venv/bin/python

Writes bench/results/train_<tag>.json and .md (tag: cpu or gpu unless --tag; median over steps after warm-up).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {torch.get_num_threads()}-core {platform.machine()} (no GPU)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_store(path: Path, d: int, rows: int, chunk: int) -> None:
    """Rows with sparse structure (a few of 4d random directions each), fp16, 128-token sequences."""
    from ghosttrack.store.writer import StoreWriter

    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((4 * d, d)).astype(np.float32) / np.sqrt(d)
    attrs = {"model": "bench-synthetic", "revision": None, "hook": "resid_post", "context_length": 128,
             "tokenizer": "none", "corpus": {"kind": "synthetic"}}
    with StoreWriter.open(path, layers=[0], d_model=d, target_tokens=rows, chunk_tokens=chunk, attrs=attrs) as w:
        for a in range(0, rows, chunk):
            n = min(chunk, rows - a)
            idx = rng.integers(0, len(atoms), (n, 16))
            x = np.einsum("nk,nkd->nd", rng.exponential(1.0, (n, 16)).astype(np.float32), atoms[idx])
            x += 0.1 * rng.standard_normal((n, d)).astype(np.float32)
            w.append({0: x}, np.zeros(n, np.int32), (np.arange(a, a + n) % 128).astype(np.int32),
                     np.arange(a, a + n) // 128)
        w.close(complete=True)


def sae_config(arch: str, d: int, h: int, k: int):
    from ghosttrack.sae.config import make_sae_config

    return make_sae_config(arch, d, h, k=k)


def time_loader(store, batch: int, steps: int, device) -> float:
    """Rows/s of the loader alone, as the trainer sets it up, from the first delivered batch to the last."""
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig
    from ghosttrack.train.runtime import resolve_resident

    resident = resolve_resident("auto", device, store)
    loader = ActivationLoader(store, 0, LoaderConfig(batch_size=batch, device_resident=resident), device=device,
                              progress=False)
    times = []
    for i, x in enumerate(loader):
        sync(device)
        times.append(time.perf_counter())
        if i == steps:
            break
    return batch * steps / (times[-1] - times[0])


def bare_steps(make_step, batches: list[torch.Tensor], steps: int, warmup: int, device,
               sync_debug: bool = False) -> float:
    """Median seconds of one step(x) over `steps` timed calls after `warmup` untimed ones.

    sync_debug (CUDA): the timed steps run under torch.cuda.set_sync_debug_mode("error"), so a
    host sync inside the step raises instead of passing unnoticed."""
    times = []
    for i in range(warmup + steps):
        x = batches[i % len(batches)]
        sync(device)
        t = time.perf_counter()
        checked = sync_debug and device.type == "cuda" and i >= warmup
        if checked:
            torch.cuda.set_sync_debug_mode("error")
        try:
            make_step(x)
        finally:
            if checked:
                torch.cuda.set_sync_debug_mode("default")
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def adam(params, device) -> torch.optim.Adam:
    """The trainer's optimizer (fused Adam where torch has it), for every library alike."""
    return torch.optim.Adam(params, lr=1e-4, fused=device.type in ("cpu", "cuda"))


def ours_step(arch: str, d: int, h: int, k: int, device, dtype: str, fused: bool = False):
    from ghosttrack.sae.module import SparseAutoencoder

    torch.manual_seed(0)
    sae = SparseAutoencoder(sae_config(arch, d, h, k)).to(device)
    opt = adam(sae.parameters(), device)
    since = torch.zeros(h, dtype=torch.int64, device=device)  # every latent just fired: nothing dead
    window = getattr(sae.cfg, "dead_tokens", None)
    max_dead = {}

    def step(x):
        rows = x.shape[0]
        if rows not in max_dead:  # the trainer's AuxK bound (SAETrainer._latents_that_can_die_soon), log_every=1
            max_dead[rows] = None if window is None else int((since + rows >= window).sum())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = sae.training_loss(x, tokens_since_fired_H=since, fused=fused, max_dead=max_dead[rows]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_trainer(store, arch: str, d: int, h: int, k: int, batch: int, steps: int, device, dtype: str,
                 fused: bool = False) -> float:
    """Tokens/s of SAETrainer: median of its own per-window measurements, first two windows dropped."""
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig
    from ghosttrack.train.trainer import SAETrainer
    from ghosttrack.train.config import TrainerConfig

    per_epoch = len(ActivationLoader(store, 0, LoaderConfig(batch_size=batch), progress=False))
    total = steps + 4
    if total > per_epoch:
        raise SystemExit(f"the bench store holds {per_epoch} batches, {total} are needed; pass more --rows")
    cfg = TrainerConfig(batch_size=batch, epochs=total / per_epoch, log_every=1, checkpoint_every=10**9,
                        device="cpu" if device.type == "cpu" else "auto", dtype=dtype, scale_rows=batch,
                        fused=fused)
    with tempfile.TemporaryDirectory() as out:
        trainer = SAETrainer(store, 0, sae_config(arch, d, h, k), cfg, out, progress=False)
        trainer.run()
    rates = [e["tokens_per_s"] for e in trainer.state.history["train"][2:]]
    return statistics.median(rates)


def check_trainer_sync_free(store, arch: str, d: int, h: int, k: int, batch: int, device, dtype: str,
                            fused: bool = False) -> int:
    """Runs SAETrainer for up to 12 steps (log every 4) whose steady-state steps must not sync: on
    CUDA under torch.cuda.set_sync_debug_mode("error") (a sync raises), on the CPU counted by
    SyncRecorder (any is an error). Returns how many steady-state steps were checked."""
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig
    from ghosttrack.train.config import TrainerConfig
    from ghosttrack.train.host_syncs import SyncRecorder, cuda_sync_errors_on_steady_steps, is_steady_step
    from ghosttrack.train.trainer import SAETrainer

    per_epoch = len(ActivationLoader(store, 0, LoaderConfig(batch_size=batch), progress=False))
    cfg = TrainerConfig(batch_size=batch, epochs=min(1.0, 12 / per_epoch), log_every=4, checkpoint_every=10**9,
                        device="cpu" if device.type == "cpu" else "auto", dtype=dtype, scale_rows=batch,
                        fused=fused)
    with tempfile.TemporaryDirectory() as out:
        trainer = SAETrainer(store, 0, sae_config(arch, d, h, k), cfg, out, progress=False)
        steady = [s for s in range(1, trainer.total_steps + 1) if is_steady_step(
            s, log_every=4, steps_per_epoch=trainer.steps_per_epoch, total_steps=trainer.total_steps)]
        if device.type == "cuda":
            try:
                trainer.run(on_step=cuda_sync_errors_on_steady_steps(trainer))
            finally:
                torch.cuda.set_sync_debug_mode("default")
            return len(steady)
        found = {}
        with SyncRecorder() as recorder:
            trainer.run(on_step=lambda step: found.__setitem__(step, recorder.take()))
    synced = {s: found[s] for s in steady if found[s]}
    if synced:
        raise SystemExit(f"{arch}: host syncs in steady-state trainer steps: {synced}")
    return len(steady)


def load_batches(store, batch: int, n: int, device) -> list[torch.Tensor]:
    from ghosttrack.store.loader import ActivationLoader, LoaderConfig

    out = []
    for x in ActivationLoader(store, 0, LoaderConfig(batch_size=batch, seed=1), device=device, progress=False):
        out.append(x.clone())
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------ peers (run in the peers venv)
def peer_steps(arch: str, d: int, h: int, k: int, device, dtype: str) -> dict[str, callable]:
    """The same step (forward + loss + backward + Adam) in each peer library that is importable."""
    steps = {}
    cast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    try:
        from sae_lens.saes.sae import TrainStepInput
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        if arch == "relu":
            sl = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=h, l1_coefficient=5.0, device=str(device)))
            coeffs = {"l1": 5.0}
        else:
            sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=h, k=k, device=str(device)))
            coeffs = {}
        sl_opt = adam(sl.parameters(), device)
        dead = torch.zeros(h, dtype=torch.bool, device=device)

        def sae_lens_step(x):
            with torch.autocast(**cast):
                out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                                                              n_training_steps=1000, is_logging_step=False))
            out.loss.backward()
            sl_opt.step()
            sl_opt.zero_grad(set_to_none=True)
        steps["SAELens"] = sae_lens_step
    except ImportError:
        pass
    if arch == "topk":
        try:
            from sparsify import SparseCoder, SparseCoderConfig

            sp = SparseCoder(d, SparseCoderConfig(num_latents=h, k=k), device=device)
            sp_opt = adam(sp.parameters(), device)
            dead = torch.zeros(h, dtype=torch.bool, device=device)

            def sparsify_step(x):
                with torch.autocast(**cast):
                    out = sp(x, dead_mask=dead)
                    loss = out.fvu + out.auxk_loss / 32
                loss.backward()
                sp_opt.step()
                sp_opt.zero_grad(set_to_none=True)
            steps["sparsify"] = sparsify_step
        except ImportError:
            pass
    return steps


def run_peers(args, device) -> dict:
    """Inside the peers venv: our bare step and each peer's, on the same random batches."""
    g = torch.Generator(device="cpu").manual_seed(0)
    batches = [torch.randn(args.batch, args.d, generator=g).to(device) for _ in range(2)]
    out = {}
    for arch in args.archs:
        row = {"ours": args.batch / bare_steps(ours_step(arch, args.d, args.h, args.k, device, args.dtype),
                                               batches, args.steps, 2, device)}
        for name, step in peer_steps(arch, args.d, args.h, args.k, device, args.dtype).items():
            row[name] = args.batch / bare_steps(step, batches, args.steps, 2, device)
        out[arch] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of (loader, step, trainer), interleaved so that load drifts hit all three")
    p.add_argument("--archs", default="relu,topk")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="D=256, H=1024, batch 1024")
    p.add_argument("--peers-python", default=None, help="python of a venv with sae-lens / eai-sparsify")
    p.add_argument("--tag", default=None, help="results file suffix (default: cpu or gpu)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    p.add_argument("--fused", action="store_true", help="relu/jumprelu through the fused Triton kernel")
    p.add_argument("--sync-debug", action="store_true",
                   help="time the bare steps under torch.cuda.set_sync_debug_mode('error') (CUDA), and check that "
                        "the trainer's steady-state steps do not sync (CUDA: that mode; CPU: counted)")
    p.add_argument("--peers-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess half
    args = p.parse_args()
    if args.quick:
        args.d, args.h, args.batch = 256, 1024, 1024
    command = " ".join(sys.argv[1:])
    args.archs = args.archs.split(",")
    device = torch.device(args.device)
    if args.peers_only:
        print(json.dumps(run_peers(args, device)))
        return

    from ghosttrack.store.reader import ActivationStore

    rows = args.batch * (args.steps + 4 + 12)  # trainer steps + the mixing buffer's fill, per epoch
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        write_store(tmp / "store", args.d, rows, chunk=max(1024, args.batch // 2))
        store = ActivationStore.open(tmp / "store")
        batches = load_batches(store, args.batch, 2, device)
        results = {"machine": machine_name(device), "d": args.d, "h": args.h, "batch": args.batch, "k": args.k,
                   "dtype": args.dtype, "steps": args.steps, "torch": torch.__version__, "command": command,
                   "repeats": args.repeats, "archs": {}}
        for arch in args.archs:
            rounds = []
            for _ in range(args.repeats):
                loader = time_loader(store, args.batch, args.steps, device)
                fused = args.fused and arch != "topk"
                step = args.batch / bare_steps(ours_step(arch, args.d, args.h, args.k, device, args.dtype, fused),
                                               batches, args.steps, 2, device, args.sync_debug)
                trainer = time_trainer(store, arch, args.d, args.h, args.k, args.batch, args.steps, device,
                                       args.dtype, fused)
                rounds.append((loader, step, trainer))
            loader, step, trainer = (statistics.median(r[i] for r in rounds) for i in range(3))
            results["archs"][arch] = {"loader_tok_s": loader, "step_tok_s": step, "trainer_tok_s": trainer,
                                      "trainer_over_min": trainer / min(step, loader), "rounds": rounds}
            if args.sync_debug:
                results["archs"][arch]["sync_free_trainer_steps"] = check_trainer_sync_free(
                    store, arch, args.d, args.h, args.k, args.batch, device, args.dtype, args.fused and arch != "topk")
            print(f"{arch}: loader {loader:,.0f}  step {step:,.0f}  trainer {trainer:,.0f} tok/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.peers_python:
        cmd = [args.peers_python, __file__, "--peers-only", "--d", str(args.d), "--h", str(args.h), "--batch",
               str(args.batch), "--k", str(args.k), "--steps", str(args.steps), "--archs", ",".join(args.archs),
               "--dtype", args.dtype, "--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"peers bench failed:\n{done.stderr[-3000:]}")
        results["peers"] = json.loads(done.stdout.strip().splitlines()[-1])
    report(results, args.tag or ("cpu" if device.type == "cpu" else "gpu"), args.out)


def report(results: dict, tag: str, out: Path = RESULTS) -> None:
    r = results
    lines = [f"# SAE training throughput ({r['machine']})", "",
             f"D={r['d']}, H={r['h']}, batch {r['batch']}, {r['dtype']}, k={r['k']} (topk); each figure is the "
             f"median of {r['repeats']} interleaved rounds, each the median over {r['steps']} steps after warm-up; "
             f"torch {r['torch']}. Command: `python bench/bench_train.py "
             f"{r['command']}`.", "",
             "| arch | loader tok/s | bare step tok/s | trainer tok/s | trainer / min(step, loader) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for arch, a in r["archs"].items():
        lines.append(f"| {arch} | {a['loader_tok_s']:,.0f} | {a['step_tok_s']:,.0f} | {a['trainer_tok_s']:,.0f} "
                     f"| {a['trainer_over_min']:.2f} |")
    checked = {arch: a["sync_free_trainer_steps"] for arch, a in r["archs"].items() if "sync_free_trainer_steps" in a}
    if checked:
        how = "under torch.cuda.set_sync_debug_mode('error')" if "(no GPU)" not in r["machine"] else "counted on the CPU"
        lines += ["", f"No host sync in the trainer's steady-state steps ({how}): "
                  + ", ".join(f"{arch} {n} steps" for arch, n in checked.items()) + "."]
    if "peers" in r:
        lines += ["", "Bare step (forward + loss + backward + Adam) on the same random batches, one process:", "",
                  "| arch | ours tok/s | peer | peer tok/s | ours / peer |", "| --- | ---: | --- | ---: | ---: |"]
        for arch, row in r["peers"].items():
            for name, rate in row.items():
                if name != "ours":
                    lines.append(f"| {arch} | {row['ours']:,.0f} | {name} | {rate:,.0f} | {row['ours'] / rate:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_{tag}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / f"train_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
