# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CUSTOMERS ?= 20000
DAYS ?= 365
SEED ?= 7
DEMO_DIR ?= demo
EXTRAS := sentence,sample,bi,bench,test,spark

.PHONY: install demo test test-quick clean

# Re-installs when pyproject.toml changes; a fresh clone creates the venv.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed

demo: install
	CUSTOMERS=$(CUSTOMERS) DAYS=$(DAYS) SEED=$(SEED) DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# No dbt, no training, no Spark, no wheel: every test marked `slow` is deselected.
test-quick: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) lookalike_cli/warehouse/dbt_project/target lookalike_cli/warehouse/dbt_project/logs
