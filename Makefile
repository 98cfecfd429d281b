# torchslim: every target installs what it needs into .venv first (fresh clones work).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: install demo test bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,hf,postgres]"
	@if $(PY) -m pip list 2>/dev/null | grep -i nvidia; then \
		echo "error: CUDA packages were installed; torch must be the 2.13.0 CPU build (see constraints.txt)"; \
		exit 1; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/torchslim demo --out $(OUT)/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)  # slow: trains every baseline once (VGG included) and runs each comparison
	$(PY) benchmarks/footprints.py
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/quantization.py
	$(PY) benchmarks/distill_lowrank.py
	$(PY) benchmarks/optimize.py --part all

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
