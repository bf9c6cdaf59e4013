"""Fused Triton SAE training step against the PyTorch reference, eager and torch.compile'd.

One training step = forward + backward of `sae_forward` (grads for W_enc, b_enc, W_dec,
b_dec; x is data). Per (dtype, B, H): median ms from triton.testing.do_bench, achieved
TFLOP/s (10 * B * D * H flops: 2 forward GEMMs, 3 backward), the fraction of this card's
bf16 matmul peak (a plain torch.matmul, measured in the same run), peak memory, the
speed-up over the eager reference, and the fused path's loss / gradient error against
the reference (so a GPU run also proves the kernels right on that card).

    python bench/bench_kernel.py                  # H100: the full grid, writes bench/results/
    python bench/bench_kernel.py --cpu-smoke      # no GPU: tiny shapes, Triton interpreter

Results: bench/results/kernel_<device>.json and .md. Exit status 1 when the fused path fails
on a shape or its loss / gradients are further from fp32 than allowed (twice the eager
reference's error in the same dtype, at least 1e-3): a GPU run also proves the kernels right.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FLOPS_PER_BDH = 10  # fwd: x@W_enc, acts@W_dec; bwd: g@W_dec^T, acts^T@g, x^T@g_pre


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="no GPU: tiny shapes through the Triton interpreter, only to prove the script works")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--batch", default="1024,4096,16384", help="comma-separated batch sizes B")
    p.add_argument("--hidden", default="16384,24576,32768", help="comma-separated latent counts H")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, from fp32,fp16,bf16")
    p.add_argument("--jumprelu", action="store_true", help="bench the JumpReLU variant (threshold + L0 term)")
    p.add_argument("--tf32", action="store_true",
                   help="fp32 matmuls in TF32 for every path (torch.set_float32_matmul_precision('high'))")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench time budget per measurement")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and Markdown results")
    return p.parse_args(argv)


def machine(torch) -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name()} ({os.cpu_count()}-core {platform.machine()} host)"
    return f"CPU: {os.cpu_count()}-core {platform.machine()} (no GPU)"


def device_slug(torch) -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")


def make_timer(torch, smoke: bool, rep_ms: int):
    """Median milliseconds of fn(): triton's do_bench on a GPU, a perf_counter loop on the CPU."""
    if smoke:
        def cpu_timer(fn, grad_to_none):
            fn()  # warm-up (first interpreter call traces the kernels)
            times = []
            for _ in range(2):
                for t in grad_to_none:
                    t.grad = None
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        return cpu_timer
    from triton.testing import do_bench

    def gpu_timer(fn, grad_to_none):
        return do_bench(fn, warmup=max(25, rep_ms // 4), rep=rep_ms, grad_to_none=grad_to_none,
                        return_mode="median")
    return gpu_timer


def matmul_peak_tflops(torch, timer, dtype, n: int) -> float:
    """TFLOP/s of a plain (n x n) @ (n x n) torch.matmul: this card's practical ceiling."""
    a = torch.randn(n, n, device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)
    b = torch.randn_like(a)
    ms = timer(lambda: torch.matmul(a, b), [])
    return 2 * n**3 / ms / 1e9


def make_params(torch, B, D, H, dtype, device, jumprelu: bool, seed: int = 0):
    """Random (never zero) inputs and trainable parameters, scaled like a fresh SAE."""
    g = torch.Generator(device=device).manual_seed(seed)
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)
    x = rnd(B, D)
    params = {"W_enc": rnd(D, H, scale=D**-0.5), "b_enc": rnd(H, scale=0.1),
              "W_dec": rnd(H, D, scale=H**-0.5), "b_dec": rnd(D, scale=0.1)}
    if jumprelu:
        params["threshold"] = (torch.rand(H, generator=g, device=device) * 0.1).to(dtype)
    for t in params.values():
        t.requires_grad_()
    return x, params


def rel_err(torch, got, want) -> float:
    want = want.detach().float()
    return ((got.detach().float() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def fp32_truth(torch, reference, x, params, kw):
    """Loss and weight gradients of the reference in fp32 on the same (upcast) inputs: the
    yardstick for every method, since a bf16 eager run is itself far from exact."""
    p32 = {k: t.detach().float().requires_grad_() for k, t in params.items()}
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # exact fp32 even under --tf32
    try:
        reference.sae_forward(x.float(), **p32, **kw).loss.backward()
        with torch.no_grad():
            loss = reference.sae_forward(x.float(), **p32, **kw).loss
    finally:
        torch.set_float32_matmul_precision(precision)
    return loss, {k: t.grad for k, t in p32.items()}


def bench_one(torch, timer, methods, reference, B, D, H, dtype, args, device) -> list[dict]:
    """Time every method on one shape, and measure its loss/gradient error against fp32."""
    x, params = make_params(torch, B, D, H, dtype, device, args.jumprelu)
    kw = {"l1_coeff": 1e-3, "l0_coeff": 1e-3 if args.jumprelu else 0.0, "bandwidth": 0.05}
    true_loss, true_grads = fp32_truth(torch, reference, x, params, kw)
    rows, ref_ms = [], None
    for name, fn in methods:
        def step():
            fn(x, **params, **kw).loss.backward()
        row = {"dtype": str(dtype).removeprefix("torch."), "B": B, "D": D, "H": H, "method": name}
        try:
            for t in params.values():
                t.grad = None
            out = fn(x, **params, **kw)  # also compiles / autotunes before the clock starts
            out.loss.backward()
            row["loss_rel_err"] = rel_err(torch, out.loss, true_loss)
            row["grad_rel_err"] = max(rel_err(torch, t.grad, true_grads[k]) for k, t in params.items())
            del out
            if device == "cuda":  # one step on its own: do_bench's cache-flush buffer must not count
                for t in params.values():
                    t.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                row["step_mem_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
            ms = timer(step, list(params.values()))
            row["ms"] = ms
            row["tflops"] = FLOPS_PER_BDH * B * D * H / ms / 1e9
            if name == "reference":
                ref_ms = ms
            if ref_ms is not None:
                row["speedup_vs_eager"] = ref_ms / ms
        except Exception as e:  # one OOM or compile failure must not lose the other rows
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    head = ["dtype", "B", "H", "method", "median ms", "TFLOP/s", "% bf16 peak", "vs eager",
            "peak GiB", "step GiB", "loss err vs fp32", "grad err vs fp32"]
    lines = [f"# SAE training step: fused Triton vs reference ({result['machine']})", "",
             f"D = {result['d_model']}, {result['arch']}, flops/step = 10*B*D*H; "
             f"bf16 matmul peak measured: {result['bf16_matmul_peak_tflops']:.3g} TFLOP/s"
             f" (fp32: {result['fp32_matmul_peak_tflops']:.3g}); {result['note']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in result["rows"]:
        if "error" in r:
            cells = [r["dtype"], str(r["B"]), str(r["H"]), r["method"], f"error: {r['error']}"] + [""] * 7
            lines.append("| " + " | ".join(cells) + " |")
            continue
        peak = r["tflops"] / result["bf16_matmul_peak_tflops"] * 100
        lines.append("| " + " | ".join([
            r["dtype"], str(r["B"]), str(r["H"]), r["method"], fmt(r["ms"], ".3f"), fmt(r["tflops"], ".3g"),
            fmt(peak, ".1f"), fmt(r.get("speedup_vs_eager"), ".2f") + "x", fmt(r.get("peak_mem_gib"), ".2f"),
            fmt(r.get("step_mem_gib"), ".2f"), fmt(r.get("loss_rel_err"), ".1e"),
            fmt(r.get("grad_rel_err"), ".1e"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton compiles anything
    import torch
    from tqdm import tqdm

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("error: no CUDA device here; this benchmark needs a GPU "
              "(pass --cpu-smoke to check the script on the CPU through the Triton interpreter)",
              file=sys.stderr)
        return 2
    if not args.cpu_smoke and os.environ.get("TRITON_INTERPRET") == "1":
        print("error: TRITON_INTERPRET=1 is set, which would time the CPU interpreter; unset it",
              file=sys.stderr)
        return 2
    from ghosttrack.kernels import fused, reference
    fused.require_available()
    if args.tf32:
        torch.set_float32_matmul_precision("high")

    device = "cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu"
    if args.cpu_smoke:
        args.d_model, args.batch, args.hidden, args.dtypes = 40, "48", "80", "fp32,bf16"
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtypes = [names[d] for d in args.dtypes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    hiddens = [int(h) for h in args.hidden.split(",")]
    timer = make_timer(torch, args.cpu_smoke, args.rep_ms)
    peak_n = 256 if args.cpu_smoke else 8192

    def compiled():
        torch._dynamo.reset()  # a fresh graph per shape: no recompile limit, no silent eager fallback
        return torch.compile(reference.sae_forward, dynamic=False)

    result = {
        "machine": machine(torch) if not args.cpu_smoke else machine(torch) + ", Triton interpreter",
        "torch": torch.__version__, "triton": __import__("triton").__version__,
        "d_model": args.d_model, "arch": "JumpReLU + L1 + L0" if args.jumprelu else "ReLU + L1",
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "bf16_matmul_peak_tflops": matmul_peak_tflops(torch, timer, torch.bfloat16, peak_n),
        "fp32_matmul_peak_tflops": matmul_peak_tflops(torch, timer, torch.float32, peak_n),
        "note": ("CPU smoke run: interpreter timings, meaningless as performance" if args.cpu_smoke
                 else "median of triton.testing.do_bench"),
        "rows": [],
    }
    grid = [(d, b, h) for d in dtypes for b in batches for h in hiddens]
    for dtype, B, H in tqdm(grid, desc="shapes", file=sys.stderr):
        methods = [("reference", reference.sae_forward)]
        if not args.no_compile:
            try:
                methods.append(("compile", compiled()))
            except Exception as e:  # torch.compile unusable here (e.g. no compiler)
                print(f"warning: torch.compile unavailable: {e}", file=sys.stderr)
        methods.append(("fused", fused.sae_forward))
        result["rows"] += bench_one(torch, timer, methods, reference, B, args.d_model, H, dtype, args, device)

    md = markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"kernel_{device_slug(torch) if not args.cpu_smoke else 'cpu_smoke'}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    failures = error_check_failures(result["rows"])
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def error_check_failures(rows: list[dict]) -> list[str]:
    """The fused path must run on every shape and be no further from fp32 than the eager
    reference in the same dtype (twice its error, at least 1e-3, for the loss and every gradient)."""
    eager = {(r["dtype"], r["B"], r["H"]): r for r in rows if r["method"] == "reference"}
    failures = []
    for r in (r for r in rows if r["method"] == "fused"):
        where = f"fused {r['dtype']} B={r['B']} H={r['H']}"
        if "error" in r:
            failures.append(f"{where} failed: {r['error']}")
            continue
        ref = eager.get((r["dtype"], r["B"], r["H"]), {})
        for key in ("loss_rel_err", "grad_rel_err"):
            allowed = max(2 * ref.get(key, 0.0), 1e-3)
            if not r[key] <= allowed:  # also catches NaN
                failures.append(f"{where}: {key} {r[key]:.1e} from fp32, more than {allowed:.1e} allowed")
    return failures


if __name__ == "__main__":
    sys.exit(main())
