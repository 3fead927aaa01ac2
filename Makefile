# plugqdisc: `make demo` and `make test` do all the set-up on a Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test valgrind bench docs system venv clean

# The reload race, without and with plugged("lo"), under a kernel that has sch_plug.
demo: venv
	$(PY) -m plugqdisc.lab -- $(PY) examples/reload_race.py

# The full suite: host tests, and the kernel tests in one lab boot.
test: venv
	$(VENV)/bin/pytest

# The C tests under valgrind, in the lab (part of `make test` too).
valgrind: venv
	$(VENV)/bin/pytest -q tests/test_errors_kernel.py -k valgrind

bench: venv
	$(PY) bench/run.py

# The documentation, as HTML in docs/_build/html; a warning is an error.
docs: venv
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

system:
	PYTHON=$(PYTHON) sh scripts/system-deps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: system $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]'
	$(PY) -m pip install -q ./chaostoolkit-plugqdisc

clean:
	rm -rf build dist *.egg-info plugqdisc/*.so bench/build docs/_build $(VENV)
