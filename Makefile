# dbnet: `make demo` and `make test` do all their own set-up (a .venv in the repo, made once).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dbnet-installed
# MPICH for the test suite lives in its own venv: its wheel and Open MPI's both install `mpiexec`.
MPICH_VENV  ?= .venv-mpich
MPICH_STAMP := $(MPICH_VENV)/.dbnet-installed
# Open MPI refuses to run as root (CI containers) unless told; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: demo test bench venv clean

$(STAMP): setup.cfg pyproject.toml tools/bootstrap-venv.sh
	@tools/bootstrap-venv.sh $(PYTHON) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[mpi,test]'
	@touch $(STAMP)

$(MPICH_STAMP): tools/bootstrap-venv.sh
	@tools/bootstrap-venv.sh $(PYTHON) $(MPICH_VENV)
	$(MPICH_VENV)/bin/python -m pip install --quiet mpich
	@touch $(MPICH_STAMP)

venv: $(STAMP)

# The main job: Downpour SGD + Adagrad, 3 replicas and 2 parameter-server shards, on Fashion-MNIST.
demo: $(STAMP)
	$(BIN)/dbnet launch experiments/fashion_downpour.toml

test: $(STAMP) $(MPICH_STAMP)
	DBNET_REQUIRE_MPICH=1 DBNET_MPICH_VENV=$(MPICH_VENV) $(BIN)/python -m pytest

# Benchmarks are not tests: dbnet vs PyTorch (CPU build), matmul ceiling, memory and update rates,
# parameter-server fetch/push bandwidth.
bench: $(STAMP)
	@$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/dbnet bench

clean:
	rm -rf $(VENV) $(MPICH_VENV) runs .pytest_cache
