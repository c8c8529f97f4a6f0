# dbnet: `make demo` and `make test` do all their own set-up (a .venv in the repo, made once).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dbnet-installed
# Open MPI refuses to run as root (CI containers) unless told; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: demo test bench venv clean

$(STAMP): setup.cfg pyproject.toml tools/bootstrap-venv.sh
	@tools/bootstrap-venv.sh $(PYTHON) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[mpi,test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dbnet train experiments/fashion_mlp_sgd.toml

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks are not tests: dbnet vs PyTorch (CPU build), matmul ceiling, memory and update rates.
bench: $(STAMP)
	@$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/dbnet bench

clean:
	rm -rf $(VENV) runs .pytest_cache
