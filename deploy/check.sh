#!/bin/sh
# Checks what `make install`, `make deb` and `make image` produce: the same
# files, a systemd unit that systemd-analyze verifies (with its man pages
# found), a package whose control fields are set, a valid Kubernetes
# manifest naming the image built; then, as root, runs them for real: the
# .deb booted under systemd in a container (TestSystemd) and the image
# under podman (TestImage). Run by `make check-deploy`.
#
# `check.sh build` does only the first part (no root needed, nothing
# timed), leaving the package, the image and its manifest in dist/;
# `check.sh run` only the second, with what the first left there. make
# test runs the first beside the packages' tests and the second alone, at
# the end.
set -eu
part=${1:-all}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check-deploy: $*" >&2; exit 1; }

# build: what make install, make deb and make image produce, checked.
build() {
	make --no-print-directory install DESTDIR="$tmp/root" PREFIX=/usr >/dev/null
	installed=$(cd "$tmp/root" && find . -type f | sort)
	want="./usr/bin/lcast
./usr/lib/systemd/system/lcast@.service
./usr/share/bash-completion/completions/lcast
./usr/share/doc/lcast/examples/lcast.toml
./usr/share/man/man5/lcast.toml.5
./usr/share/man/man8/lcast.8"
	[ "$installed" = "$want" ] || fail "make install put
$installed
want
$want"
	[ "$(stat -c %a "$tmp/root/etc/lcast")" = 700 ] || fail "/etc/lcast is not mode 0700"

	# The unit as an instance, its ExecStart and ExecReload pointing at the installed binary,
	# its Documentation= at the installed man pages. Any complaint fails.
	unit="$tmp/lcast@lc0.service"
	sed "s|^\(Exec[A-Za-z]*\)=/usr/bin/lcast|\1=$tmp/root/usr/bin/lcast|" "$tmp/root/usr/lib/systemd/system/lcast@.service" >"$unit"
	out=$(MANPATH="$tmp/root/usr/share/man" systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
	[ -z "$out" ] || fail "systemd-analyze verify: $out"
	echo "check-deploy: systemd-analyze verify lcast@.service: ok"

	rm -f dist/lcast_*.deb
	make --no-print-directory deb >/dev/null
	deb=$(ls dist/lcast_*.deb)
	listing=$(dpkg-deb -c "$deb")
	packaged=$(echo "$listing" | awk '$1 !~ /^d/ {print $NF}' | sort)
	[ "$packaged" = "$want" ] || fail "$deb holds
$packaged
want
$want"
	echo "$listing" | grep -q '^drwx------ root/root .* ./etc/lcast/$' || fail "$deb: /etc/lcast is not mode 0700"
	for field in Package Version Architecture Maintainer Description; do
		[ -n "$(dpkg-deb -f "$deb" "$field")" ] || fail "$deb has no $field"
	done
	echo "check-deploy: $deb: $(echo "$packaged" | wc -l) files, as make install: ok"

	# The Kubernetes manifest, offline: strict decoding into the API's types,
	# the API server's OpenAPI schema, and what lcast needs (deploy/k8s/check).
	(cd deploy/k8s/check && go vet . && go test -count=1 . >/dev/null && go run . ../lcast.yaml) || fail "deploy/k8s/lcast.yaml"

	# The image, and the DaemonSet make image writes naming it.
	(cd deploy/image && go vet . && go test -count=1 . >/dev/null) || fail "deploy/image"
	rm -f dist/lcast-image.tar dist/lcast.yaml
	make --no-print-directory image >/dev/null
	image=$(grep -m1 'image:' dist/lcast.yaml | awk '{print $2}')
	(cd deploy/k8s/check && go run . -image "$image" ../../../dist/lcast.yaml) || fail "dist/lcast.yaml"
}

# run: the package and the image in containers, as root.
run() {
	# The package under a real systemd and the image under podman, which
	# need root (namespaces, containers).
	if [ "$(id -u)" != 0 ]; then
		echo "check-deploy: not root: the .deb under systemd and the image under podman are not tried" >&2
		exit 0
	fi
	deb=$(ls dist/lcast_*.deb 2>/dev/null) && [ -f dist/lcast-image.tar ] && [ -f dist/lcast.yaml ] ||
		fail "dist/ lacks the .deb, the image or its manifest: run deploy/check.sh build first"
	go test -count=1 -run '^(TestSystemd|TestImage)$' -v ./internal/e2e -args \
		-deploy.deb="$PWD/$deb" -deploy.image="$PWD/dist/lcast-image.tar" -deploy.manifest="$PWD/dist/lcast.yaml" >"$tmp/run.log" 2>&1 ||
		{ cat "$tmp/run.log" >&2; fail "the .deb under systemd or the image under podman"; }
	cat "$tmp/run.log"
}

case $part in
build) build ;;
run) run ;;
all)
	build
	run
	;;
*) echo "usage: $0 [build|run]" >&2; exit 2 ;;
esac
