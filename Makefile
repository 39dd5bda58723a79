# The two commands a newcomer needs (see README):  make demo   and   make test
# Each installs what it needs: a virtualenv here, Kafka's jars (Maven Central, cached), redis-server.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test unit lint stack-up stack-down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## make demo: local stack up, worker + api running, a 60 s simulated Double-11 peak, a summary
demo: $(VENV)/.installed
	$(VENV)/bin/peakroute demo

## make test: every test, unit and integration (starts its own Kafka and Redis)
test: $(VENV)/.installed
	$(PY) -m pytest

unit: $(VENV)/.installed
	$(PY) -m pytest -m "not integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check peakroute tests

stack-up: $(VENV)/.installed
	$(VENV)/bin/peakroute stack up

stack-down: $(VENV)/.installed
	$(VENV)/bin/peakroute stack down

clean:
	rm -rf $(VENV) .peakroute .pytest_cache
