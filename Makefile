# Everything a newcomer needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CORE   := $(VENV)/.core-stamp
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs/demo

.PHONY: install demo test test-slow test-all recipes lint typecheck bench clean wheel wheel-demo

# the package and its core dependencies: all the demo needs (about 75 s on 2 cores)
$(CORE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $(CORE)

# plus the dev extra: test, lint and type-check tools and every optional integration
$(STAMP): $(CORE)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# torchattacks declares torchvision, which has no working build here; it never imports it
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

demo: $(CORE)
	$(VENV)/bin/compaudit demo --out $(OUT)

lint: install
	$(VENV)/bin/ruff check src tests examples scripts $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests examples scripts $(wildcard bench)
	# the layers of ../DESIGN.md ([tool.importlinter] in pyproject.toml)
	$(VENV)/bin/lint-imports

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

# The package as a user gets it: the built wheel, installed into a fresh venv with the pinned
# versions but without this Makefile's extras (no dev tools, no torchattacks), must run the demo.
WHEEL_DIR  := build/wheel
WHEEL_VENV := build/wheel-venv

wheel: install
	rm -rf $(WHEEL_DIR)
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w $(WHEEL_DIR) .

wheel-demo: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt $(WHEEL_DIR)/compaudit-*.whl
	$(WHEEL_VENV)/bin/compaudit --help > /dev/null
	cd $(WHEEL_VENV) && bin/compaudit demo --quiet --out demo-run

bench: install
	@for f in bench/*.py; do echo "# $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
