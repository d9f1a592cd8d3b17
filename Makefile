# zoneout — every target is one line calling a Python entry point. `make help` lists them.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
SCALE ?= paper
DATA ?= stdlib
MIRROR ?=
SEEDS ?=
JOBS ?=
LOCAL_FILE ?=
PYTEST_ARGS ?=
DRY_RUN ?=
MIRROR_ARG = $(if $(MIRROR),--mirror $(MIRROR),)
# every reproduce-<table> target: SCALE=paper|cpu, SEEDS=1,2,3, JOBS=N (N runs at a time), DRY_RUN=1 (print the plan)
REPRO_ARGS = --scale $(SCALE) $(if $(SEEDS),--seeds $(SEEDS),) $(if $(JOBS),--jobs $(JOBS),) $(if $(DRY_RUN),--dry-run,) $(MIRROR_ARG)
LOCAL_ARG = $(if $(LOCAL_FILE),-- data.local_file=$(LOCAL_FILE),)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo data data-ptb data-text8 data-enwik8 data-mnist data-fashion-mnist \
        reproduce-char_ptb reproduce-word_ptb reproduce-text8 reproduce-pmnist reproduce-enwik8 reproduce-grid \
        results bench bench-gpu reliability smoke-datasets

help: ## list the targets (hardware and time each assumes are stated per target)
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## install the package and test tools (CPU torch 2.13.0 only if no torch is present)
	@$(PYTHON) -c "import sys, os; sys.path = [p for p in sys.path if p not in ('', os.getcwd())]; import zoneout; sys.exit(os.path.dirname(os.path.realpath(zoneout.__file__)) != os.path.realpath('zoneout'))" 2>/dev/null \
		|| rm -f .make/installed  # installed for another checkout (or not at all): install this one
	@$(MAKE) --no-print-directory .make/installed

.make/installed: pyproject.toml
	@mkdir -p .make
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $@

test: install ## run the offline CPU test suite (~4-10 min on 2 cores)
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: install ## train a small zoneout LSTM and an unregularized one on CPU (~3-8 min on 2 cores, first use compiles the kernels), print BPC side by side; DATA=stdlib|ptb_char
	$(PYTHON) scripts/demo.py --data $(DATA)

data: data-ptb data-text8 data-enwik8 data-mnist ## download + verify + prepare every corpus (needs network or MIRROR=...)

data-ptb: install ## Penn Treebank, word and character level (MIRROR=url or ZONEOUT_MIRROR)
	$(PYTHON) scripts/download_data.py ptb $(MIRROR_ARG)

data-text8: install ## text8 (100M chars, 90/5/5 split)
	$(PYTHON) scripts/download_data.py text8 $(MIRROR_ARG)

data-enwik8: install ## enwik8 (100M bytes, 90/5/5 split)
	$(PYTHON) scripts/download_data.py enwik8 $(MIRROR_ARG)

data-mnist: install ## MNIST as pixel sequences (50k/10k/10k)
	$(PYTHON) scripts/download_data.py mnist $(MIRROR_ARG)

data-fashion-mnist: install ## Fashion-MNIST, same format as MNIST (offline stand-in)
	$(PYTHON) scripts/download_data.py fashion_mnist $(MIRROR_ARG)

reproduce-enwik8: install ## enwik8 extension (not in the paper): paper scale = 1 GPU, ~1 day per run; SCALE=cpu JOBS=2: 2 cores, the first 4 MB of enwik8 (or LOCAL_FILE=<a copy of them>), 6 rows x 2 seeds in ~12 min
	$(PYTHON) scripts/reproduce.py enwik8 $(REPRO_ARGS) $(LOCAL_ARG)

reproduce-char_ptb: install ## Table 1 char-PTB, 6 rows x 2 seeds: paper scale = 1 GPU, ~3-6 h per run; SCALE=cpu JOBS=2: 2 cores, ~8-20 min
	$(PYTHON) scripts/reproduce.py char_ptb $(REPRO_ARGS)

reproduce-word_ptb: install ## Table 1 word-PTB (perplexity), 5 rows x 2 seeds: paper scale = 1 GPU, ~2-4 h per run; SCALE=cpu JOBS=2: 2 cores, ~30 min
	$(PYTHON) scripts/reproduce.py word_ptb $(REPRO_ARGS)

reproduce-text8: install ## Table 1 text8: paper scale = 1 GPU, ~1 day per run; SCALE=cpu: 2 cores, the first 3 MB of text8 (or LOCAL_FILE=<a copy of them>), 6 rows x 2 seeds, JOBS=2 ~10 min
	$(PYTHON) scripts/reproduce.py text8 $(REPRO_ARGS) $(LOCAL_ARG)

reproduce-pmnist: install ## Table 2 permuted sequential MNIST: paper scale = 1 GPU, ~1 day per run; SCALE=cpu JOBS=2: 2 cores, 3 LSTM rows x 2 seeds on MNIST's test set, ~30 min
	$(PYTHON) scripts/reproduce.py pmnist $(REPRO_ARGS)

reproduce-grid: install ## Figure 3 z_c x z_h grid on char-PTB (valid BPC heatmap): paper scale = 1 GPU, ~3-6 h per cell; SCALE=cpu: 2 cores, ~10 min
	$(PYTHON) scripts/reproduce.py grid $(REPRO_ARGS)

results: install ## collect every finished run -> results/*.md, runs.csv, plots, README block (offline, seconds)
	$(PYTHON) scripts/collect_results.py

bench: install ## speed benchmark: zoneout layers vs torch.nn.LSTM/GRU (ratios, 15 interleaved reps) -> results/bench.md (~2-6 min)
	$(PYTHON) scripts/bench.py --reps 15 --threads 1 --out results/bench

bench-gpu: install ## the same benchmark on the GPU (needs CUDA): zoneout layers vs cuDNN nn.LSTM/GRU -> results/bench_gpu.md (~2 min)
	$(PYTHON) scripts/bench.py --device cuda --reps 15 --out results/bench_gpu

reliability: install ## provoke every failure scenario (kill -9, preemption, NaN, full disk, bad configs/data; ~1.5 min) -> results/reliability.md
	$(PYTHON) scripts/reliability_report.py

smoke-datasets: install ## one short CPU zoneout run per dataset on real data (~10 min on 2 cores) -> results/datasets.md
	$(PYTHON) scripts/dataset_smoke.py
