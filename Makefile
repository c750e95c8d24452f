# Two commands: `make demo` (train on MNIST, write a sample grid) and `make test`.
# Both create .venv once and reuse it; a changed pyproject.toml reinstalls.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.udm-installed

.PHONY: install demo test test-all

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is the CPU build on disk here; an unpinned torch pulls GBs of CUDA
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# k-diffusion without its deps: they pull torchvision and wandb; tests/test_peers.py loads only its sampling.py
	$(BIN)/pip install --quiet --no-deps k-diffusion==0.1.1.post1
	# torch-fidelity, the peer that udm's FID Inception must agree with (tests/test_inception.py loads its Inception
	# module), beside the environment in .venv/peers: installed, it would make torchmetrics import it, and through
	# its __init__ torchvision, which has no CPU wheel here
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/peers torch-fidelity==0.4.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/udm-train experiment=mnist_flow

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''
