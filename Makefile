# Set-up is two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install lint test run bench chaos kafka-fetch kafka-up kafka-down kafka-status \
	registry-fetch registry-up registry-down registry-status clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)  ## create .venv and install the package with its dev tools

lint: install  ## ruff
	$(VENV)/bin/ruff check processor tests

kafka-fetch: install  ## fetch the Apache Kafka broker jars from Maven Central (cached)
	$(PY) -m processor.localkafka fetch

# BROKERS=3 selects the three-node cluster; kafka-down and kafka-status without it mean both.
BROKERS_FLAG = $(if $(BROKERS),--brokers $(BROKERS))

kafka-up: install  ## start the local KRaft broker on 127.0.0.1 (idempotent; BROKERS=3: a cluster)
	$(PY) -m processor.localkafka up $(BROKERS_FLAG)

kafka-down: install  ## stop the local broker and cluster (idempotent; BROKERS=1|3: only that)
	$(PY) -m processor.localkafka down $(BROKERS_FLAG)

kafka-status: install  ## is the local broker (and the cluster) running?
	$(PY) -m processor.localkafka status $(BROKERS_FLAG)

registry-fetch: install  ## fetch Apicurio Registry from Maven Central (cached)
	$(PY) -m processor.localregistry fetch

registry-up: install  ## start the local Schema Registry on 127.0.0.1 (idempotent); prints its URL
	$(PY) -m processor.localregistry up

registry-down: install  ## stop the local Schema Registry (idempotent)
	$(PY) -m processor.localregistry down

registry-status: install  ## is the local Schema Registry running?
	$(PY) -m processor.localregistry status

test: install kafka-fetch registry-fetch lint  ## every test; the fixtures start the broker and registry they need
	$(PY) -m pytest

# `make run RUN_ARGS="--bundles 5000 --rate 100"` sizes the demo.
RUN_ARGS ?= --bundles 1000 --rate 25

# `make run REGISTRY=1`: the same in Schema Registry mode (the local registry, or SCHEMA_REGISTRY_URL).
REGISTRY_ARGS = $(if $(REGISTRY),--schema-registry "$${SCHEMA_REGISTRY_URL:-$$($(PY) -m processor.localregistry url)}")

run: install kafka-fetch  ## the demo: local broker + processor + simulated services (~1 min; REGISTRY=1: registry mode)
	@if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then $(PY) -m processor.localkafka up; fi
	@if [ -n "$(REGISTRY)" ] && [ -z "$$SCHEMA_REGISTRY_URL" ]; then $(PY) -m processor.localregistry up; fi
	$(PY) -m processor demo \
	  --bootstrap-servers "$${KAFKA_BOOTSTRAP_SERVERS:-$$($(PY) -m processor.localkafka bootstrap)}" \
	  $(REGISTRY_ARGS) $(RUN_ARGS)
	@if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then echo "The broker keeps running: make kafka-down stops it."; fi

bench: install kafka-fetch  ## throughput, ceilings, latency, recovery, RSS, restore -> .local/bench/ (BENCH_ARGS=--help)
	$(PY) -m processor.bench $(BENCH_ARGS)

# `make chaos SIZE=long` is the README's long run; CHAOS_ARGS overrides any preset value,
# e.g. CHAOS_ARGS="--bundles 5000 --duration 5m --seed 7" (`processor chaos --help`).
SIZE ?= ci
CHAOS_ARGS ?=

chaos: install kafka-fetch  ## faults, scaling and fuzzed input on the three-node cluster, checked (SIZE=ci|long)
	$(PY) -m processor chaos --size $(SIZE) $(CHAOS_ARGS)

clean: kafka-down registry-down  ## stop the brokers and registry, remove local data (keeps caches)
	rm -rf .local/kafka/data .local/kafka/logs .local/kafka-cluster .local/registry/logs .local/registry/tmp \
	  .local/chaos
