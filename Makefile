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

.PHONY: all build deps test test-fuzz test-deploy fuzz vet unit check-deploy bench demo install uninstall deb image clean help

# What make test runs beside the packages' tests: at the lowest priority
# (SCHED_IDLE, or else nice 19), on what CPU they leave, so that they
# neither slow them nor disturb what they time.
IDLE    := $(shell chrt --idle 0 true 2>/dev/null && echo chrt --idle 0 || echo nice -n 19)

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

test: deps ## vet, fuzz briefly, every test (as root: namespace tests too) and check-deploy
	@# The packages' tests under the race detector, and beside them, on
	@# the CPU they leave, vet and the fuzzers (test-fuzz) and
	@# check-deploy's builds (test-deploy); each one's output in one piece
	@# once it ends.
	$(MAKE) --no-print-directory -j3 --output-sync=target unit test-fuzz test-deploy
	@# The end-to-end tests time what users see (starts within 1 s, a
	@# stream under a flood): alone, after everything else has ended, on a
	@# 2-core machine. Their daemons and helper programs are built as
	@# users run them, not under the race detector, which watches the
	@# same code in the packages' tests.
	$(GO) test -count=1 -timeout 30m ./internal/e2e
	@# check-deploy's containers (TestSystemd times a stream across a
	@# reload), alone too, on what its builds left in dist/.
	deploy/check.sh run

# What make test runs beside unit, at the lowest priority: vet, then the
# fuzzers; and check-deploy's builds and checks that need no root (its own
# makes run one job at a time, outside this make's job slots).
test-fuzz:
	$(IDLE) $(GO) vet ./...
	$(IDLE) $(MAKE) --no-print-directory fuzz
test-deploy:
	MAKEFLAGS='$(filter-out -j% --jobserver%,$(MAKEFLAGS))' $(IDLE) deploy/check.sh build

unit: ## every package's tests but the end-to-end ones, under the race detector
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /internal/e2e)

vet: ## go vet every package
	$(GO) vet ./...

check-deploy: ## check install, deb and image; boot the .deb under systemd and run the image with podman (as root)
	deploy/check.sh

# The fuzz tests, one "PACKAGE FUZZTEST" a line: read from the test files
# that go list names (those a test build compiles), which is what go test
# -list would say without building and running every package's tests.
FUZZ_TESTS = $(GO) list -f '{{range .TestGoFiles}}{{$$.ImportPath}} {{$$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .XTestGoFiles}}{{$$.ImportPath}} {{$$.Dir}}/{{.}}{{"\n"}}{{end}}' ./... | \
	while read -r pkg file; do sed -n "s|^func \(Fuzz[A-Za-z0-9_]*\)([a-z_]* \*testing\.F) {\$$|$$pkg \1|p" "$$file"; done

fuzz: ## run each fuzz test for FUZZTIME (default 300000x: executions, a few seconds each)
	@tests=$$($(FUZZ_TESTS)) || exit 1; [ -n "$$tests" ] || { echo "no fuzz tests found" >&2; exit 1; }; \
	echo "$$tests" | while read -r pkg f; do \
	  echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	  out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || { echo "$$out" | tail -40; exit 1; }; \
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
