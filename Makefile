# Bunker's build, test and benchmark entry points. `make test` installs what the
# tests need (staticcheck, and versitygw as the real S3 server, both with
# go install at pinned versions) and runs every test with -race.
GO        ?= go
BIN       := bin/bunker
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
STATICCHECK_VERSION := v0.8.2
# Keep in step with internal/backend/s3/s3test.Version.
VERSITYGW_VERSION := v1.8.0
VERSITYGW := $(CURDIR)/.tools/versitygw-$(VERSITYGW_VERSION)/versitygw
# etcd's etcdutl, which the agent runs to rebuild an etcd member: the module's
# tool (go.mod's tool directive), at the etcd version go.mod requires.
ETCDUTL   := $(CURDIR)/.tools/etcdutl
GOBIN     := $(shell $(GO) env GOPATH)/bin
FUZZTIME  ?= 20000x

.PHONY: providers all build tools postgres test test-short lint fuzz bench bench-prune bench-s3 bench-copy soak demo clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/bunker

$(GOBIN)/staticcheck:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# The S3-compatible server the tests run against (builds in a few minutes once).
$(VERSITYGW):
	GOBIN=$(dir $(VERSITYGW)) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

$(ETCDUTL): go.mod go.sum
	$(GO) build -o $(ETCDUTL) go.etcd.io/etcd/etcdutl/v3

# PostgreSQL's server and client (Debian packages) for the database provider's tests.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v pg_dump >/dev/null || \
	  { echo "installing postgresql (Debian)"; export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq postgresql >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; }

# The agent's providers' tests: btrfs snapshots on a loop device, and a real
# container engine serving the Docker Engine API (Podman, with runc and a
# busybox image made from Debian's static busybox).
providers:
	@command -v btrfs >/dev/null && command -v podman >/dev/null && command -v runc >/dev/null && dpkg -s busybox-static >/dev/null 2>&1 || \
	  { echo "installing btrfs-progs podman runc busybox-static (Debian)"; export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq btrfs-progs podman runc busybox-static >/dev/null || \
	    { apt-get update -qq && apt-get install -y -qq btrfs-progs podman runc busybox-static >/dev/null; }; }

tools: $(GOBIN)/staticcheck $(VERSITYGW) $(ETCDUTL) postgres providers

lint: $(GOBIN)/staticcheck
	@unformatted=$$(gofmt -l cmd internal scripts); if [ -n "$$unformatted" ]; then echo "gofmt: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	$(GO) test -count=1 ./internal/lint/

# Every test, with the race detector, then a short run of every fuzz target.
test: lint build $(VERSITYGW) $(ETCDUTL) postgres providers
	BUNKER_VERSITYGW=$(VERSITYGW) BUNKER_ETCDUTL=$(ETCDUTL) $(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

test-short: build $(VERSITYGW) $(ETCDUTL) postgres providers
	BUNKER_VERSITYGW=$(VERSITYGW) BUNKER_ETCDUTL=$(ETCDUTL) $(GO) test -count=1 ./...

# Each fuzz target for FUZZTIME: a count of executions by default (a time limit
# can end during minimization and fail spuriously); `make fuzz FUZZTIME=10m` to soak.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

soak: $(VERSITYGW) $(ETCDUTL) postgres
	$(MAKE) fuzz FUZZTIME=5m
	BUNKER_SOAK=1 BUNKER_VERSITYGW=$(VERSITYGW) BUNKER_ETCDUTL=$(ETCDUTL) $(GO) test -count=1 -timeout 2h ./...

bench: build $(VERSITYGW)
	BUNKER_BIN=$(CURDIR)/$(BIN) bash scripts/bench/run.sh
	BUNKER_BIN=$(CURDIR)/$(BIN) bash scripts/bench/prune.sh
	BUNKER_BIN=$(CURDIR)/$(BIN) BUNKER_VERSITYGW=$(VERSITYGW) bash scripts/bench/s3.sh
	BUNKER_BIN=$(CURDIR)/$(BIN) bash scripts/bench/copy.sh

bench-copy: build
	BUNKER_BIN=$(CURDIR)/$(BIN) bash scripts/bench/copy.sh

bench-s3: build $(VERSITYGW)
	BUNKER_BIN=$(CURDIR)/$(BIN) BUNKER_VERSITYGW=$(VERSITYGW) bash scripts/bench/s3.sh

bench-prune: build
	BUNKER_BIN=$(CURDIR)/$(BIN) bash scripts/bench/prune.sh

demo: build
	bash scripts/demo.sh

clean:
	rm -rf bin .bench .demo
