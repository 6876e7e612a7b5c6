#!/usr/bin/env bash
# make demo: lcast's main job on one machine. Three sites, each a network
# namespace, reach each other only through a routed, unicast-only "internet"
# namespace. lcast runs in each site; an unmodified program (socat) in site 1
# sends to ff1e::1234, naming no interface, and socat in sites 2 and 3,
# joined to the group on lc0, prints what arrives. In the second act, sites
# 1 and 2 are also the gateways of a LAN each (a bridge with a host that
# runs no lcast): a LAN host in site 1 streams to a LAN host in site 2.
# Everything the demo creates is removed at the end, also on failure or
# Ctrl-C.
set -euo pipefail
LCAST=$(readlink -f "${LCAST:-./lcast}")
TAG=$$
INET=lcdemo-inet-$TAG
WORK=$(mktemp -d)
SITES=(1 2 3)
GATEWAYS=(1 2)
site() { echo "lcdemo-site$1-$TAG"; }
lanhost() { echo "lcdemo-lan$1-$TAG"; }

cleanup() {
	local all=("$INET")
	for i in "${SITES[@]}"; do all+=("$(site "$i")"); done
	for i in "${GATEWAYS[@]}"; do all+=("$(lanhost "$i")"); done
	for ns in "${all[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
	done
	sleep 0.5
	for ns in "${all[@]}"; do
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, TUN)" >&2; exit 1; }
for c in socat ip ping; do
	command -v "$c" >/dev/null || { echo "make demo needs $c (apt-get install socat iproute2 iputils-ping)" >&2; exit 1; }
done

echo "== an internet that routes unicast only, and three sites behind it"
ip netns add "$INET"
ip -n "$INET" link set lo up
ip netns exec "$INET" sysctl -qw net.ipv6.conf.all.forwarding=1
for i in "${SITES[@]}"; do
	ns=$(site "$i")
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip -n "$INET" link add "up$i" type veth peer name eth0 netns "$ns"
	ip netns exec "$INET" sysctl -qw "net.ipv6.conf.up$i.accept_dad=0"
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
	ip -n "$INET" addr add "2001:db8:$i::1/64" dev "up$i" nodad
	ip -n "$INET" link set "up$i" up
	ip -n "$ns" addr add "2001:db8:$i::2/64" dev eth0 nodad
	ip -n "$ns" link set eth0 up
	ip -n "$ns" -6 route add default via "2001:db8:$i::1"
	until ip netns exec "$ns" ping -6 -c1 -W1 "2001:db8:$i::1" >/dev/null 2>&1; do sleep 0.1; done
	(umask 077 && "$LCAST" genkey > "$WORK/site$i.key") # lcast refuses a key others can read
	echo "   site $i: $ns, underlay 2001:db8:$i::2"
done

echo "== a LAN behind sites 1 and 2: a bridge (lan0, 2001:db8:10N::1/64) with one host that runs no lcast"
for i in "${GATEWAYS[@]}"; do
	ns=$(site "$i") host=$(lanhost "$i")
	ip netns add "$host"
	ip -n "$host" link set lo up
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0
	ip netns exec "$host" sysctl -qw net.ipv6.conf.default.accept_dad=0
	ip -n "$ns" link add name lan0 type bridge mcast_snooping 0
	ip -n "$ns" addr add "2001:db8:10$i::1/64" dev lan0 nodad
	ip -n "$ns" link add port1 type veth peer name eth0 netns "$host"
	ip -n "$ns" link set port1 master lan0 up
	ip -n "$ns" link set lan0 up
	ip -n "$host" addr add "2001:db8:10$i::10/64" dev eth0 nodad
	ip -n "$host" link set eth0 up
	until ip netns exec "$host" ping -6 -c1 -W1 "2001:db8:10$i::1" >/dev/null 2>&1; do sleep 0.1; done
	echo "   LAN host $host: 2001:db8:10$i::10"
done

for i in "${SITES[@]}"; do
	{
		echo "private_key_file = \"$WORK/site$i.key\""
		case $i in 1|2) echo 'lan_interfaces = ["lan0"]' ;; esac
		for j in "${SITES[@]}"; do
			[ "$i" = "$j" ] && continue
			echo "[[peer]]"
			echo "public_key = \"$("$LCAST" pubkey < "$WORK/site$j.key")\""
			echo "endpoint = \"[2001:db8:$j::2]:51840\""
			case $j in 1|2) echo "lan_prefixes = [\"2001:db8:10$j::/64\"]" ;; esac
		done
	} > "$WORK/site$i.toml"
done

echo "== lcast up in every site"
for i in "${SITES[@]}"; do
	ip netns exec "$(site "$i")" "$LCAST" up -c "$WORK/site$i.toml" 2> "$WORK/lcast$i.log" &
done
for i in "${SITES[@]}"; do
	for _ in $(seq 50); do
		ip netns exec "$(site "$i")" "$LCAST" status -c "$WORK/site$i.toml" >/dev/null 2>&1 && break
		sleep 0.1
	done
done

echo "== socat in sites 2 and 3 joins ff1e::1234 on lc0"
for i in 2 3; do
	ip netns exec "$(site "$i")" socat -u UDP6-RECV:4242,ipv6-join-group=[ff1e::1234]:lc0 - > "$WORK/received$i" &
done
# Wait until site 1 forwards ff1e::1234 to both sites: each peer it goes
# to has a "reason" in the status's forwarding list.
for _ in $(seq 50); do
	n=$(ip netns exec "$(site 1)" "$LCAST" status -c "$WORK/site1.toml" --json | grep -c '"reason"' || true)
	[ "$n" -ge 2 ] && break
	sleep 0.1
done

echo "== socat in site 1 sends 5 messages to ff1e::1234, naming no interface"
for n in 1 2 3 4 5; do
	echo "message $n from site 1" | ip netns exec "$(site 1)" socat -u - UDP6-SENDTO:[ff1e::1234]:4242
	sleep 0.1
done
sleep 0.5

status=0
for i in 2 3; do
	echo "== site $i received:"
	sed 's/^/   /' "$WORK/received$i"
	got=$(grep -c "from site 1" "$WORK/received$i" || true)
	if [ "$got" != 5 ]; then echo "   site $i got $got of 5 messages" >&2; status=1; fi
done

echo "== act 2: socat on site 2's LAN host joins ff1e::5678 on its eth0"
ip netns exec "$(lanhost 2)" socat -u UDP6-RECV:4242,ipv6-join-group=[ff1e::5678]:eth0 - > "$WORK/received-lan" &
# Wait until site 1 forwards ff1e::5678 to site 2.
for _ in $(seq 50); do
	ip netns exec "$(site 1)" "$LCAST" status -c "$WORK/site1.toml" --json | grep -q '"group": *"ff1e::5678"' && break
	sleep 0.1
done
# Routers take one off the hop limit, and a packet with hop limit 1 stays
# on its LAN: socat sends with 8 (IPV6_MULTICAST_HOPS is option 18 of
# level 41, IPPROTO_IPV6).
echo "== socat on site 1's LAN host sends 5 messages to ff1e::5678 with hop limit 8"
for n in 1 2 3 4 5; do
	echo "message $n from a LAN host in site 1" |
		ip netns exec "$(lanhost 1)" socat -u - "UDP6-SENDTO:[ff1e::5678]:4242,setsockopt-int=41:18:8"
	sleep 0.1
done
sleep 0.5
echo "== site 2's LAN host received:"
sed 's/^/   /' "$WORK/received-lan"
got=$(grep -c "from a LAN host in site 1" "$WORK/received-lan" || true)
if [ "$got" != 5 ]; then echo "   site 2's LAN host got $got of 5 messages" >&2; status=1; fi

echo "== lcast status in site 1"
ip netns exec "$(site 1)" "$LCAST" status -c "$WORK/site1.toml"
echo "== lcast status in site 2"
ip netns exec "$(site 2)" "$LCAST" status -c "$WORK/site2.toml"
[ "$status" = 0 ] && echo "== demo done: both sites and the LAN host received every message; cleaning up" || echo "== demo FAILED" >&2
exit $status
