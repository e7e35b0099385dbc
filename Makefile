# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install midol with its dev extras when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.midol-installed
# torch/torchvision are installed first and explicitly: this pair is the one the
# build machines carry; elsewhere override, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO   ?= demo
# Tests run on 2 cores; more threads than cores only adds contention.
export OMP_NUM_THREADS ?= 2

.PHONY: demo study test test-install test-fast lint bench clean-demo help

help:
	@echo "make demo   - set up .venv and run the whole pipeline on the embedded synthetic data"
	@echo "make study  - the M-IDoL claim on the demo data: every variant x 3 seeds, paired CIs (about 1.5 h)"
	@echo "make test   - set up .venv and run the full test suite (all but the install test)"
	@echo "make test-install - install the base package alone into a fresh venv and check it is lean and works"
	@echo "make test-fast - the tests not marked slow (no subprocess pipelines)"
	@echo "make lint   - ruff check"
	@echo "make bench  - CPU benchmarks (ratios against same-run baselines)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh $(DEMO)

study: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/study.sh $(DEMO)

# tests/report/test_html_browser.py renders the HTML report in headless Chromium; without one it skips.
HAVE_BROWSER = command -v chromium || command -v chromium-browser || command -v google-chrome \
	|| command -v google-chrome-stable

test: $(STAMP)
	$(BIN)/ruff check midol_cli tests benchmarks
	@($(HAVE_BROWSER)) >/dev/null 2>&1 || echo "browser tests skipped: no chromium on PATH; install Debian's chromium package (sudo apt-get install chromium), as .ci/run does"
	$(BIN)/python -m pytest -q -m "not install"

# The base install alone (no extras) in a fresh venv: tests/test_base_install.py (about a minute).
test-install: $(STAMP)
	$(BIN)/python -m pytest -q -m install

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check midol_cli tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/embed.py
	$(BIN)/python benchmarks/pretrain_step.py --recipe recipes/smoke.yaml

clean-demo:
	rm -rf $(DEMO)
