# lcast: IPv6 multicast across the Internet through lc0.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
GO      ?= go
FUZZTIME ?= 5s

.PHONY: all build test fuzz bench demo install uninstall clean help

all: build

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build ./lcast
	$(GO) build -o lcast ./cmd/lcast

test: ## run each fuzzer briefly, then every test (as root: namespace tests too)
	$(GO) vet ./...
	$(MAKE) --no-print-directory fuzz
	$(GO) test -race -count=1 ./...

fuzz: ## run each fuzz test for FUZZTIME (default 5s)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/dev/null || exit 1; \
	  done; \
	done

demo: build ## as root: run lcast in network namespaces with real programs
	LCAST=./lcast demo/demo.sh

bench: ## as root: micro-benchmarks, then lcast against kernel VXLAN on namespaced sites
	$(GO) test -run '^$$' -bench . -benchmem ./mld ./router
	$(GO) test -run '^$$' -bench FanOut -benchtime 1x -v ./internal/e2e

install: build ## install the binary under $(DESTDIR)$(PREFIX)
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 lcast $(DESTDIR)$(BINDIR)/lcast

uninstall: ## remove what install installed
	rm -f $(DESTDIR)$(BINDIR)/lcast

clean: ## remove build output
	rm -f lcast
