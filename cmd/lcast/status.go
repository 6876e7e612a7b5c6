package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/librecast/lcast/internal/control"
)

// printStatus prints st as aligned tables for people: the interface, the
// groups local programs listen to, the peers (those trusted as relays
// marked, and those that say they relay but are not trusted) with whether
// traffic flows both ways, the age of their last packet and handshake, traffic, drops
// and groups, a gateway's LANs with their querier and groups, where each
// group's packets go (peers and LANs) and why, and drops by reason.
// now dates the packets and handshakes.
func printStatus(w io.Writer, st *control.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "interface:\t%s\n", st.Interface)
	fmt.Fprintf(tw, "address:\t%s\n", st.Address)
	fmt.Fprintf(tw, "public key:\t%s\n", st.PublicKey)
	fmt.Fprintf(tw, "listen port:\t%d\n", st.ListenPort)
	fmt.Fprintf(tw, "relay:\t%s\n", yesNo(st.Relay))
	tw.Flush()
	fmt.Fprintf(w, "\nlocal groups: %d\n", len(st.LocalGroups))
	if len(st.LocalGroups) > 0 {
		fmt.Fprintln(tw, "  GROUP\tMODE\tSOURCES")
		for _, g := range st.LocalGroups {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", g.Group, g.Mode, orDash(strings.Join(g.Sources, ",")))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\npeers: %d\n", len(st.Peers))
	if len(st.Peers) > 0 {
		fmt.Fprintln(tw, "  PUBLIC KEY\tENDPOINT\tCONNECTED\tPATH\tLAST RX\tHANDSHAKE\tRX\tTX\tDROPPED\tGROUPS")
		for _, p := range st.Peers {
			key := p.PublicKey
			switch {
			case p.Relay:
				key += " (relay)"
			case p.SaysRelay:
				key += " (says relay, not trusted)"
			case p.Learnt == "introduced":
				key += " (introduced)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", key, orDash(p.Endpoint), yesNo(p.Connected), orDash(p.Path), ago(p.LastRx, now), ago(p.LastHandshake, now),
				traffic(p.RxPackets, p.RxBytes), traffic(p.TxPackets, p.TxBytes), total(p.Drops), groupList(p.Groups))
		}
		tw.Flush()
	}
	for _, l := range st.LANs {
		querier := orDash(l.Querier)
		if l.IsQuerier {
			querier += " (this node)"
		}
		fmt.Fprintf(w, "\nlan %s: prefixes %s, querier %s, %d groups, %d packets from foreign sources\n",
			l.Interface, orDash(strings.Join(l.Prefixes, ",")), querier, len(l.Groups), l.ForeignSources)
		if len(l.Groups) > 0 {
			fmt.Fprintln(tw, "  GROUP\tMODE\tSOURCES")
			for _, g := range l.Groups {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", g.Group, g.Mode, orDash(strings.Join(g.Sources, ",")))
			}
			tw.Flush()
		}
	}
	fmt.Fprintf(w, "\nforwarding: %d groups\n", len(st.Forwarding))
	if len(st.Forwarding) > 0 {
		fmt.Fprintln(tw, "  GROUP\tTO PEER\tMODE\tSOURCES\tWHY")
		for _, f := range st.Forwarding {
			group := f.Group
			for _, to := range f.To {
				dest := to.PublicKey
				if to.Interface != "" {
					dest = "lan " + to.Interface
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", group, dest, to.Mode, orDash(strings.Join(to.Sources, ",")), to.Reason)
				group = ""
			}
		}
		tw.Flush()
	}
	if dropped := total(st.Drops); dropped > 0 {
		fmt.Fprintf(w, "\ndropped: %d\n", dropped)
		fmt.Fprintln(tw, "  REASON\tPACKETS")
		for _, reason := range slices.Sorted(maps.Keys(st.Drops)) {
			if n := st.Drops[reason]; n > 0 {
				fmt.Fprintf(tw, "  %s\t%d\n", reason, n)
			}
		}
		tw.Flush()
	}
}

// ago says how long before now t was, or "never" for nil.
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	return now.Sub(*t).Round(time.Second).String() + " ago"
}

// traffic is a packet count and a byte count in binary units.
func traffic(packets, bytes uint64) string {
	return fmt.Sprintf("%d pkts, %s", packets, binaryBytes(bytes))
}

// binaryBytes writes n bytes with a binary unit: 980 B, 1.5 KiB, 12.3 MiB.
func binaryBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n), 0
	for v >= 1024 && unit < 5 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", v, " KMGTP"[unit])
}

func total(counts map[string]uint64) uint64 {
	var sum uint64
	for _, n := range counts {
		sum += n
	}
	return sum
}

// groupList shows up to three groups and how many more there are.
func groupList(groups []control.Group) string {
	var names []string
	for i, g := range groups {
		if i == 3 {
			names = append(names, fmt.Sprintf("+%d more", len(groups)-3))
			break
		}
		names = append(names, g.Group)
	}
	return orDash(strings.Join(names, ","))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
