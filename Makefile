# The two commands a newcomer needs (see README):  make demo   and   make test
# Each installs what it needs: a virtualenv here, Kafka's jars (Maven Central, cached), redis-server.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Installs are constrained by requirements.lock: every package, transitive ones included, at the
# exact version the project was tested with (pyproject.toml pins only the direct dependencies).
LOCK   := requirements.lock

.PHONY: demo test unit lint stack-up stack-down clean lock audit-deps

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	touch $@

## make demo: local stack up, worker + api running, a 60 s simulated Double-11 peak, a summary
demo: $(VENV)/.installed
	$(VENV)/bin/peakroute demo

## make test: every test, unit and integration (starts its own Kafka and Redis)
# Test files are spread over TEST_PROCS processes (pytest-xdist, whole files per process; each
# process starts its own Kafka and Redis).  TEST_PROCS=1 runs them one after the other.
TEST_PROCS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_PROCS) --dist loadfile

unit: $(VENV)/.installed
	$(PY) -m pytest -m "not integration"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check peakroute tests benchmarks deploy

stack-up: $(VENV)/.installed
	$(VENV)/bin/peakroute stack up

stack-down: $(VENV)/.installed
	$(VENV)/bin/peakroute stack down

## make lock: re-resolve pyproject.toml's pins in a fresh virtualenv and write every version to requirements.lock
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q --upgrade pip
	$(VENV)-lock/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK); $(VENV)-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(VENV)-lock

## make audit-deps: pip-audit (in a throwaway virtualenv, not the project's) of every locked package
AUDIT_VENV ?= /tmp/peakroute-audit-venv
audit-deps:
	test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && \
		$(AUDIT_VENV)/bin/python -m pip install -q pip-audit==2.10.1; }
	$(AUDIT_VENV)/bin/pip-audit --strict --desc on --no-deps --disable-pip -r $(LOCK)

clean:
	rm -rf $(VENV) .peakroute .pytest_cache
