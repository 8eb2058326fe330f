# Coffer's front door. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
DEV_DIR ?= $(CURDIR)/.coffer-dev
NODES ?= 3
PROTOC_GEN_GO_VERSION := v1.36.11
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GOBIN := $(shell $(GO) env GOPATH)/bin
TEST_TIMEOUT ?= 12m
FUZZTIME ?= 30s
# Minimising a new interesting input may take at most this long; Go's
# default (60s) can eat the whole FUZZTIME of a target.
FUZZMINTIME ?= 2s
BENCH_ARGS ?= --op mix --concurrency 64 --duration 10s --keys 1000
SOFTHSM2_MODULE ?= /usr/lib/softhsm/libsofthsm2.so
export SOFTHSM2_MODULE
SOFTHSM_DIR := $(CURDIR)/.softhsm
SOFTHSM_TOKEN ?= coffer-dev

.PHONY: help build run bench-compare test test-short lint fmt proto deps bench chaos chaos-scenarios netlab fuzz clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build cofferd and coffer into ./bin
	$(GO) build -o $(BIN)/ ./cmd/cofferd ./cmd/coffer

run: build ## start a local 3-node cluster (data in .coffer-dev, reused across runs)
	$(BIN)/cofferd dev --nodes $(NODES) --dir $(DEV_DIR)

test: lint softhsm netlab vagrant-validate ## vet, format check, and every test with the race detector (what CI runs)
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

test-short: ## unit tests without the race detector and without the slow ones
	$(GO) test -short ./...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go') | grep -v '\.pb\.go$$' || true); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

deps: ## download Go modules
	$(GO) mod download

proto: ## regenerate the protobuf and gRPC code from api/
	@command -v protoc >/dev/null || { echo "installing protoc (protobuf-compiler)"; \
	  (apt-get update -qq && apt-get install -y -qq protobuf-compiler) || sudo apt-get install -y -qq protobuf-compiler; }
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$(GOBIN):$$PATH" protoc -I api \
	  --go_out=. --go_opt=module=github.com/coffer-kms/coffer \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/coffer-kms/coffer \
	  api/coffer/v1/*.proto

bench: build ## benchmark a running cluster (source .coffer-dev/env first); BENCH_ARGS to tune
	$(BIN)/coffer bench $(BENCH_ARGS)

bench-compare: ## compare the working tree with BASE (default HEAD~1) on OP (default get): alternating fresh clusters (ROUNDS, CONC, DURATION)
	./scripts/bench-compare.sh

chaos: netlab ## the chaos suite: 6 nodes in 3 sites, 16 recording clients, a seeded fault schedule for CHAOS_DURATION (default 5m, seed CHAOS_SEED), linearizability and loss checks; prints its report (chaos-report.json)
	set -o pipefail; CHAOS_DURATION=$${CHAOS_DURATION:-5m} CHAOS_REPORT=$${CHAOS_REPORT:-$(CURDIR)/chaos-report.json} \
	  $(GO) test -count=1 -v -run '^TestChaos_Schedule$$' -timeout 90m ./chaos/ | grep --line-buffered -v '^=== RUN'

chaos-scenarios: netlab ## the single-fault tests on real processes (CHAOS_KILLS leader kills, default 20; site loss; frozen and cut-off leader; majority loss; backup); failover times to chaos-scenarios.json
	CHAOS_KILLS=$${CHAOS_KILLS:-20} CHAOS_REPORT=$${CHAOS_REPORT:-$(CURDIR)/chaos-scenarios.json} \
	  $(GO) test -count=1 -v -run '^TestChaos_(LeaderKill|SiteLoss|FrozenLeader|PartitionedLeader|MajorityLost|StatusWithoutQuorum|BackupRestore)$$' -timeout 30m ./chaos/

netlab: ## install iproute2 and curl if missing (the chaos lab's network namespaces, as root)
	@for t in ip:iproute2 curl:curl; do command -v $${t%%:*} >/dev/null || { echo "installing $${t#*:}"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $${t#*:}; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $${t#*:}; fi; }; done

fuzz: ## run every fuzz target for FUZZTIME each (minimising for at most FUZZMINTIME)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) $$pkg || exit 1; \
	  done; done

.PHONY: softhsm softhsm-init

softhsm: ## install SoftHSM2 (Debian package softhsm2) if softhsm2-util is missing; the PKCS#11 tests need it
	@command -v softhsm2-util >/dev/null || { echo "installing softhsm2"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y softhsm2; \
	  else sudo apt-get update && sudo apt-get install -y softhsm2; fi; }

softhsm-init: softhsm ## create a throwaway SoftHSM2 token in .softhsm/ for manual use (then: source .softhsm/env)
	@mkdir -p $(SOFTHSM_DIR)/tokens && chmod 700 $(SOFTHSM_DIR)
	@echo '*' > $(SOFTHSM_DIR)/.gitignore
	@printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
	  "$(SOFTHSM_DIR)/tokens" > $(SOFTHSM_DIR)/softhsm2.conf
	@printf 'export SOFTHSM2_CONF=%s\n' "$(SOFTHSM_DIR)/softhsm2.conf" > $(SOFTHSM_DIR)/env
	@export SOFTHSM2_CONF=$(SOFTHSM_DIR)/softhsm2.conf; \
	  if softhsm2-util --show-slots | grep -q "Label: *$(SOFTHSM_TOKEN) *$$"; then \
	    echo "token $(SOFTHSM_TOKEN) already exists in $(SOFTHSM_DIR)"; \
	  else \
	    umask 077; head -c 12 /dev/urandom | base64 | tr -d '+/=' > $(SOFTHSM_DIR)/pin; \
	    head -c 12 /dev/urandom | base64 | tr -d '+/=' > $(SOFTHSM_DIR)/so-pin; \
	    softhsm2-util --init-token --free --label $(SOFTHSM_TOKEN) \
	      --pin "$$(cat $(SOFTHSM_DIR)/pin)" --so-pin "$$(cat $(SOFTHSM_DIR)/so-pin)" >/dev/null && \
	    echo "token $(SOFTHSM_TOKEN) created in $(SOFTHSM_DIR) (PIN in $(SOFTHSM_DIR)/pin, SO PIN in $(SOFTHSM_DIR)/so-pin)"; \
	  fi
	@echo "next: source $(SOFTHSM_DIR)/env && $(BIN)/cofferd keystore init-master --module $(SOFTHSM2_MODULE) --token $(SOFTHSM_TOKEN) --pin-file $(SOFTHSM_DIR)/pin"

# Vagrant lab (Vagrantfile, deploy/README.md). validate needs no provider:
# without VirtualBox or libvirt it checks everything but the provider blocks.
# --no-install-recommends: the recommended vagrant-libvirt pulls in QEMU and
# libvirt (430 packages, 335 MB) that validate does not need.
.PHONY: vagrant-validate

vagrant-validate: ## install Vagrant (Debian package vagrant) if missing, then vagrant validate the Vagrantfile
	@command -v vagrant >/dev/null || { echo "installing vagrant"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y --no-install-recommends vagrant; \
	  else sudo apt-get update && sudo apt-get install -y --no-install-recommends vagrant; fi; }
	@mkdir -p .vagrant && { [ -e .vagrant/.gitignore ] || echo '*' > .vagrant/.gitignore; }
	@out=$$(vagrant validate 2>&1) && { echo "$$out"; exit 0; }; \
	  if grep -q 'No usable default provider' <<<"$$out"; then \
	    echo "no Vagrant provider installed: validating without the provider blocks"; vagrant validate --ignore-provider; \
	  else echo "$$out"; exit 1; fi

clean: ## remove build output (not the dev cluster's data)
	rm -rf $(BIN)
