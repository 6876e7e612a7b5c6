# lcast: IPv6 multicast across the Internet through lc0.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
MANDIR  := $(PREFIX)/share/man
UNITDIR := $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
GO      ?= go
# An execution count, not a duration: with a duration, Go 1.26's fuzzing
# coordinator can fail a target with "context deadline exceeded" at the
# end of a clean run on a busy machine (go.dev/issue/75804, fixed in 1.27).
FUZZTIME ?= 300000x
NFPM    := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.44.0
VERSION ?= $(shell deploy/version.sh)
# The image make image builds (a tag may not hold the version's "+").
IMAGE   ?= localhost/lcast:$(subst +,-,$(VERSION))

.PHONY: all build deps test fuzz check-deploy bench demo install uninstall deb image clean help

# What the demo and the tests run besides lcast, as Debian packages.
DEB_DEPS = iproute2 iputils-ping procps util-linux socat iperf nftables tinc tcpdump gcc liblibrecast-dev libsodium-dev systemd groff-base \
	mmdebstrap systemd-container podman runc wireguard-go valgrind

all: build

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## as root on Debian: install what the demo and the tests need, if missing
	@missing=; for c in ip ping sysctl unshare socat iperf nft tincd tcpdump gcc systemd-analyze groff mmdebstrap systemd-nspawn podman runc wireguard-go valgrind; do command -v $$c >/dev/null || missing=1; done; \
	[ -f /usr/include/librecast.h ] && [ -f /usr/include/sodium.h ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(DEB_DEPS)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_DEPS) >/dev/null; \
	  else echo "some test tools are missing; as root on Debian run: make deps" >&2; fi; \
	fi

build: ## build ./lcast
	$(GO) build -o lcast ./cmd/lcast

test: deps ## run each fuzzer briefly, then every test (as root: namespace tests too), then check-deploy
	$(GO) vet ./...
	$(MAKE) --no-print-directory fuzz
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /internal/e2e)
	@# The end-to-end tests time what users see (starts within 1 s, a
	@# stream under a flood): alone, not beside the other packages' tests
	@# on a 2-core machine.
	$(GO) test -race -count=1 -timeout 30m ./internal/e2e
	$(MAKE) --no-print-directory check-deploy

check-deploy: ## check install, deb and image; boot the .deb under systemd and run the image with podman (as root)
	deploy/check.sh

fuzz: ## run each fuzz test for FUZZTIME (default 300000x: executions, a few seconds each)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || { echo "$$out" | tail -40; exit 1; }; \
	  done; \
	done

demo: deps build ## as root: run lcast in network namespaces with real programs
	LCAST=./lcast demo/demo.sh

bench: deps ## as root: micro-benchmarks, then lcast side by side with unicast, VXLAN, tinc and wireguard-go (results in bench-results/)
	$(GO) test -run '^$$' -bench . -benchmem ./mld ./router
	$(GO) test -run '^$$' -bench 'SideBySide|RelayFanOut|Gateway' -benchtime 1x -timeout 60m ./internal/e2e -args -bench.out=$(CURDIR)/bench-results

# What install puts where, below $(DESTDIR): source, mode, destination.
INSTALLED = \
	lcast 0755 $(BINDIR)/lcast \
	deploy/systemd/lcast@.service 0644 $(UNITDIR)/lcast@.service \
	deploy/man/lcast.8 0644 $(MANDIR)/man8/lcast.8 \
	deploy/man/lcast.toml.5 0644 $(MANDIR)/man5/lcast.toml.5 \
	deploy/completions/lcast.bash 0644 $(PREFIX)/share/bash-completion/completions/lcast \
	deploy/lcast.toml.example 0644 $(PREFIX)/share/doc/lcast/examples/lcast.toml

install: build ## install lcast, its systemd unit, man pages, bash completion and example config under $(DESTDIR)$(PREFIX)
	@set -- $(INSTALLED); while [ $$# -gt 0 ]; do \
	  echo "install $$1 -> $(DESTDIR)$$3"; install -D -m $$2 $$1 $(DESTDIR)$$3 || exit 1; shift 3; \
	done
	sed -i 's|^\(Exec[A-Za-z]*\)=/usr/bin/lcast|\1=$(BINDIR)/lcast|' $(DESTDIR)$(UNITDIR)/lcast@.service
	install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/lcast

uninstall: ## remove what install installed (not /etc/lcast)
	@set -- $(INSTALLED); while [ $$# -gt 0 ]; do rm -f $(DESTDIR)$$3; shift 3; done

deb: build ## build dist/lcast_VERSION_ARCH.deb with nfpm (the files install puts under /usr)
	mkdir -p dist
	GOARCH=$$($(GO) env GOARCH) LCAST_VERSION=$(VERSION) $(GO) run $(NFPM) package -f deploy/nfpm.yaml -p deb -t dist/

image: ## build dist/lcast-image.tar, lcast's OCI image (offline, no base image), and dist/lcast.yaml, the DaemonSet naming it
	mkdir -p dist
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o dist/lcast-static ./cmd/lcast
	cd deploy/image && $(GO) run . -bin ../../dist/lcast-static -ref $(IMAGE) -version $(VERSION) -arch $$($(GO) env GOARCH) \
	  -revision "$$(git rev-parse HEAD 2>/dev/null)" -created "$$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)" -o ../../dist/lcast-image.tar
	sed 's|localhost/lcast:VERSION|$(IMAGE)|' deploy/k8s/lcast.yaml >dist/lcast.yaml
	@echo "image $(IMAGE): dist/lcast-image.tar (podman load -i dist/lcast-image.tar); its DaemonSet: dist/lcast.yaml"

clean: ## remove build output
	rm -rf lcast dist
