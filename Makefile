# zoneout — every target is one line calling a Python entry point. `make help` lists them.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
SCALE ?= cpu
DATA ?= stdlib
MIRROR ?=
SEEDS ?=
PYTEST_ARGS ?=
MIRROR_ARG = $(if $(MIRROR),--mirror $(MIRROR),)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo data data-ptb data-text8 data-enwik8 data-mnist data-fashion-mnist \
        reproduce-char_ptb reproduce-word_ptb reproduce-text8 reproduce-pmnist reproduce-enwik8 reproduce-grid \
        results bench

help: ## list the targets (hardware and time each assumes are stated per target)
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: .make/installed ## install the package and test tools (CPU torch $(TORCH_VERSION) if no torch is present)

.make/installed: pyproject.toml
	@mkdir -p .make
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $@

test: install ## run the offline CPU test suite (~5-10 min on 2 cores)
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: install ## train a small zoneout LSTM and an unregularized one on CPU (~4 min), print BPC side by side; DATA=stdlib|ptb_char
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
