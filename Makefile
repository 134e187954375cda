# make demo : set up .venv, build the RoIAlign op, train + evaluate on the embedded shapes data
# make test : set up .venv, build the op, run the test suite
# make ops  : (re)build the RoIAlign op      make bench : run the benchmarks (JSON in bench/results)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Intra-op threads: these machines have 2 cores.
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: all demo test ops bench lint clean

all: test

$(VENV)/.installed: setup.py setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[cpu,test]"
	touch $@

$(VENV)/.ops-built: $(VENV)/.installed $(wildcard custom_ops/build.py custom_ops/roi_align/cc/*/*)
	$(PY) custom_ops/build.py
	touch $@

ops: $(VENV)/.installed
	$(PY) custom_ops/build.py --force
	touch $(VENV)/.ops-built

demo: $(VENV)/.ops-built
	$(PY) samples/shapes/shapes.py demo --logs runs/shapes

test: $(VENV)/.ops-built
	$(PY) -m pytest -q -n 2 --durations=15

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check mrcnn samples tests bench custom_ops notebooks

bench: $(VENV)/.ops-built
	$(PY) bench/data_pipeline.py
	$(PY) bench/roi_align.py
	$(PY) bench/inference.py
	$(PY) bench/flops.py

clean:
	rm -rf build *.egg-info mrcnn/ops/_lib $(VENV)/.ops-built
