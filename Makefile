# One entry point for setting up, serving and testing. Every target installs
# what it needs first, so each works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
MODELS ?= $(CURDIR)/models
GRPC_PORT ?= 8500
REST_PORT ?= 8501

KVENV  := .venv-kserve
KSERVE_PINS := kserve==0.21.0 kubernetes==37.0.1
KSTAMP := $(KVENV)/.installed-$(subst $() ,-,$(KSERVE_PINS))

.PHONY: install install-test loadtools serve models test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard protos/*.proto protos/*/*/*.proto)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[text]'
	$(BIN)/python -m serving.protogen
	@touch $@

install-test: $(TSTAMP) $(KSTAMP)

# tritonclient (the V2 tests' client) pins protobuf<7 and ml-dtypes<=0.5.4, older
# than TensorFlow's; it runs on these, and its gRPC stubs are the very
# descriptors serving/_generated compiles, so it goes in without its pins.
TRITONCLIENT := tritonclient==2.73.0

$(TSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,text]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps '$(TRITONCLIENT)'
	@touch $@

# The kserve SDK (its V2 REST/gRPC clients, its API models for deploy/kserve/)
# pins protobuf<7, older than TensorFlow's, and its V2 stubs clash with
# tritonclient's in one process: it lives in a venv of its own, which tests run
# as a subprocess (tests/e2e/kserve_client.py, tests/unit/kserve_schema.py).
# kubernetes is pinned too: kserve_schema.py uses its ApiClient.
$(KSTAMP):
	@test -x $(KVENV)/bin/python || $(PYTHON) -m venv $(KVENV)
	$(KVENV)/bin/python -m pip install -q --disable-pip-version-check $(KSERVE_PINS)
	@rm -f $(KVENV)/.installed-*
	@touch $@

models: install
	$(BIN)/python -m serving.examples $(MODELS)

serve: models
	$(BIN)/model-server --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
	    --model_config_file=$(MODELS)/models.config \
	    --model_config_file_poll_wait_seconds=10

# wrk (REST) and h2load (gRPC) drive `make bench` and its quick mode in `make test`.
SUDO := $(shell test "$$(id -u)" -eq 0 || echo sudo)
loadtools:
	@command -v wrk >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q wrk nghttp2-client; }

test: install-test loadtools
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check serving tests loadtests
	$(BIN)/ruff format --check serving tests loadtests
	$(BIN)/mypy

bench: install-test loadtools
	$(BIN)/python -m loadtests $(BENCH_ARGS)
	$(BIN)/python -m loadtests.v2

clean:
	rm -rf $(VENV) $(KVENV) models serving/_generated .pytest_cache
