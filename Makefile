# Every target that needs Python depends on .venv/.installed, so each one works
# as the first command on a fresh machine. setup is quick when nothing changed:
# the stamp is only rebuilt when pyproject.toml is newer than it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dosql up --config examples/quickstart/dosql.toml --data-dir .dosql-data

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench

# sqllogictest select1-5 through the router, every query (make test scores every 3rd).
.PHONY: conformance
conformance: $(STAMP)
	DOSQL_SLT_EVERY=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/conformance/test_conformance.py

# The pushdown differential fuzzer on a big budget (make test runs it on 300 statements).
# DOSQL_FUZZ_EXAMPLES: statements to run; DOSQL_FUZZ_SEED: the seed (default: the date).
.PHONY: fuzz
fuzz: $(STAMP)
	DOSQL_FUZZ_EXAMPLES=$${DOSQL_FUZZ_EXAMPLES:-20000} DOSQL_FUZZ_SEED=$${DOSQL_FUZZ_SEED:-$$(date +%Y%m%d)} \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout=0 tests/router/test_fuzz_pushdown.py

# A real Debezium consumer (Flink SQL's debezium-json format) reading the change stream.
# Not part of make test: it installs apache-flink (~0.5 GB, needs Java 17) into its own
# virtualenv, since Flink's pinned dependencies conflict with the project's.
FLINK_VENV ?= .venv-flink
FLINK_PYTHON ?= $(FLINK_VENV)/bin/python
.PHONY: test-flink
test-flink: $(STAMP)
	test -x $(FLINK_PYTHON) || ($(PY) -m venv $(FLINK_VENV) && $(FLINK_VENV)/bin/pip install --quiet apache-flink)
	DOSQL_FLINK_PYTHON=$(abspath $(FLINK_PYTHON)) $(BIN)/python -m pytest -q -p no:cacheprovider tests/subscribe/test_flink_debezium.py

clean:
	rm -rf $(VENV) $(FLINK_VENV) .dosql-data .pytest_cache

# Kill -9 at every two-phase-commit step under client load, repeated (make test: 1 round).
.PHONY: jepsen
jepsen: $(STAMP)
	DOSQL_JEPSEN_ROUNDS=$${DOSQL_JEPSEN_ROUNDS:-5} DOSQL_E2E_DTX_ROUNDS=$${DOSQL_E2E_DTX_ROUNDS:-3} \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout=0 \
		tests/router/test_atomic_commit.py tests/shard/test_prepared.py tests/router/test_resolver.py \
		tests/e2e/test_distributed_commit_e2e.py::test_faults_keep_every_view_whole

# SQLAlchemy's own dialect compliance suite against a fresh cluster (compliance/sqlalchemy).
.PHONY: sqla-suite
sqla-suite: $(STAMP)
	$(BIN)/python compliance/sqlalchemy/run.py -q -p no:warnings test_suite.py
