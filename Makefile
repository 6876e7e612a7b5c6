# lcast: IPv6 multicast across the Internet through lc0.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
GO      ?= go
FUZZTIME ?= 5s

.PHONY: all build deps test fuzz bench demo install uninstall clean help

# What the demo and the tests run besides lcast, as Debian packages.
DEB_DEPS = iproute2 iputils-ping procps util-linux socat iperf nftables tinc gcc liblibrecast-dev libsodium-dev

all: build

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## as root on Debian: install what the demo and the tests need, if missing
	@missing=; for c in ip ping sysctl unshare socat iperf nft tincd gcc; do command -v $$c >/dev/null || missing=1; done; \
	[ -f /usr/include/librecast.h ] && [ -f /usr/include/sodium.h ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(DEB_DEPS)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_DEPS) >/dev/null; \
	  else echo "some test tools are missing; as root on Debian run: make deps" >&2; fi; \
	fi

build: ## build ./lcast
	$(GO) build -o lcast ./cmd/lcast

test: deps ## run each fuzzer briefly, then every test (as root: namespace tests too)
	$(GO) vet ./...
	$(MAKE) --no-print-directory fuzz
	$(GO) test -race -count=1 ./...

fuzz: ## run each fuzz test for FUZZTIME (default 5s)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || { echo "$$out" | tail -40; exit 1; }; \
	  done; \
	done

demo: deps build ## as root: run lcast in network namespaces with real programs
	LCAST=./lcast demo/demo.sh

bench: deps ## as root: micro-benchmarks, then lcast side by side with unicast, VXLAN and tinc (results in bench-results/)
	$(GO) test -run '^$$' -bench . -benchmem ./mld ./router
	$(GO) test -run '^$$' -bench SideBySide -benchtime 1x -timeout 60m ./internal/e2e -args -bench.out=$(CURDIR)/bench-results

install: build ## install the binary under $(DESTDIR)$(PREFIX)
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 lcast $(DESTDIR)$(BINDIR)/lcast

uninstall: ## remove what install installed
	rm -f $(DESTDIR)$(BINDIR)/lcast

clean: ## remove build output
	rm -f lcast
