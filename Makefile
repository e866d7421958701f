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

# Two workers, whole files each (module fixtures such as the Spark session stay on one worker):
# most steps of a test (dbt, training, Spark) use one core, so two files at once halve the wall time.
# The longest files start first and the dbt-built warehouses are built once for both workers
# (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# No dbt, no training, no Spark, no wheel: every test marked `slow` is deselected.
test-quick: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) lookalike_cli/warehouse/dbt_project/target lookalike_cli/warehouse/dbt_project/logs
