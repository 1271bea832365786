# make run: start the gateway on 127.0.0.1:8000 with an embedded database.
# make test: the whole test suite.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; \
	done 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
PLUGIN_DIRS := $(wildcard plugins/*/setup.cfg)

.PHONY: run test bench bench-docs install dist image clean

$(BIN)/riceball: setup.cfg setup.py pyproject.toml $(PLUGIN_DIRS)
	@test -n "$(PYTHON)" || { echo "RiceBall needs Python 3.11 or newer (python3.11, python3.12 ...)"; exit 1; }
	@echo "Installing RiceBall and its plugins into $(VENV) (a minute or two the first time)..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]' \
		$(foreach p,$(dir $(PLUGIN_DIRS)),-e ./$(p))
	@touch $@

install: $(BIN)/riceball

run: install
	$(BIN)/riceball serve

test: install
	$(BIN)/ruff check riceball_proxy plugins tests benchmarks scripts/hook-reference
	$(BIN)/mypy
	@bash scripts/install-browser
	@bash scripts/install-agents
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# make bench: each scenario straight to a fake upstream and through the gateway; the table goes to
# var/performance.md. make bench-docs puts it into the tracked docs/performance.md instead.
BENCH_OUTPUT ?= var/performance.md

bench: install
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
		|| { echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	@mkdir -p $(dir $(BENCH_OUTPUT))
	$(BIN)/python -m benchmarks.run --write $(BENCH_OUTPUT) $(BENCH_ARGS)
	@echo "The figures are in $(BENCH_OUTPUT)."

bench-docs:
	$(MAKE) bench BENCH_OUTPUT=docs/performance.md

# make dist: wheels of the gateway and of its first-party plugins, to install where it runs
# (docs/deployment.md); DIST=folder puts them elsewhere.
DIST ?= dist

dist: install
	@rm -rf $(DIST) && mkdir -p $(DIST)
	@$(BIN)/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w $(DIST) . \
		$(foreach p,$(dir $(PLUGIN_DIRS)),./$(p))
	@echo "The wheels are in $(DIST)/: pip install $(DIST)/riceball_proxy-*.whl (and the plugins' you use)."

# make image: the container image (Dockerfile), tagged $(IMAGE). BASE=... builds on another base image
# (scripts/base-image makes localhost/riceball-base:bookworm without any registry); the machine's CA bundle
# goes to pip as a build secret; CONTAINER_TOOL=docker builds with Docker (podman builds in Docker's format,
# which keeps the HEALTHCHECK).
CONTAINER_TOOL ?= podman
IMAGE ?= riceball:latest
BASE ?=
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
comma := ,

image:
	$(CONTAINER_TOOL) build $(if $(BASE),--build-arg BASE=$(BASE)) $(if $(filter podman,$(CONTAINER_TOOL)),--format docker) \
		$(if $(wildcard $(CA_BUNDLE)),--secret id=ca$(comma)src=$(CA_BUNDLE)) -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info dist
