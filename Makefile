# Everything a newcomer needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs/demo

.PHONY: install demo test test-slow test-all recipes lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# torchattacks declares torchvision, which has no working build here; it never imports it
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/compaudit demo --out $(OUT)

lint: install
	$(VENV)/bin/ruff check src tests examples $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests examples $(wildcard bench)

typecheck: install
	$(VENV)/bin/mypy

# The default suite: fast, offline, under 10 minutes on 2 cores.
test: install lint typecheck
	$(PY) -m pytest -q -m "not slow"

# Slow tests (end-to-end kills, longer trainings).
test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q

# The digits version of each seed paper's recipe, run and checked against the paper's findings
# (docs/reproductions.md); resumes from runs/recipes. About 18 minutes on 2 cores from scratch (the
# adversarial probe searches C&W's c per sample and checks convergence: seed001 and seed002 take ~8 each).
recipes: install
	$(PY) examples/digits_findings.py --out runs/recipes --markdown runs/recipes/findings.md

bench: install
	@for f in bench/*.py; do echo "# $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
