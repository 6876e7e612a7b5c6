#!/usr/bin/env bash
# make demo: lcast's main job on one machine. A site in a network namespace
# runs lcast; an unmodified program (socat) joins ff1e::1234 on lc0, and
# lcast status shows the membership learnt from MLD. Everything it creates
# is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
LCAST=${LCAST:-./lcast}
NS=lcast-demo-$$
WORK=$(mktemp -d)

cleanup() {
	for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
	sleep 0.3
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, TUN)" >&2; exit 1; }
command -v socat >/dev/null || { echo "make demo needs socat (apt-get install socat)" >&2; exit 1; }

ip netns add "$NS"
ip -n "$NS" link set lo up
echo "private_key = \"$($LCAST genkey)\"" > "$WORK/site.toml"

echo "== lcast up in namespace $NS"
ip netns exec "$NS" "$LCAST" up -c "$WORK/site.toml" 2> "$WORK/lcast.log" &
for _ in $(seq 50); do ip netns exec "$NS" "$LCAST" status -c "$WORK/site.toml" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== socat joins ff1e::1234 on lc0"
ip netns exec "$NS" socat -u UDP6-RECV:4242,ipv6-join-group=[ff1e::1234]:lc0 /dev/null &
sleep 0.3
ip netns exec "$NS" "$LCAST" status -c "$WORK/site.toml"
echo "== routes that send unbound multicast to lc0"
ip -n "$NS" -6 route show table local | grep 'dev lc0' | grep multicast | head -3
