package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// benchRow is one figure of one system.
type benchRow struct {
	System string  `json:"system"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
}

// benchReport is what BenchmarkSideBySide measured: the figures, and the
// raw runs and samples behind them.
type benchReport struct {
	Date    string     `json:"date"`
	Kernel  string     `json:"kernel"`
	CPUs    int        `json:"cpus"`
	Rows    []benchRow `json:"figures"`
	Runs    []loadRun  `json:"runs"`
	JoinUS  []float64  `json:"join_to_first_packet_us"`
	LeaveUS []float64  `json:"leave_to_stop_us"`
}

// benchSystems are the report's columns, in order. "relays" is the floor
// under lcast's added latency (relayFloor): it has latency figures only.
var benchSystems = []string{"direct", "vxlan", "tinc", "wireguard-go", "relays", "lcast"}

// benchBaselines are the systems lcast's figures are divided by, each a
// column of ratios.
var benchBaselines = benchSystems[:len(benchSystems)-1]

// value returns the figure of system for metric, or 0.
func (r *benchReport) value(system, metric string) float64 {
	for _, row := range r.Rows {
		if row.System == system && row.Metric == metric {
			return row.Value
		}
	}
	return 0
}

func (r *benchReport) has(system, metric string) bool {
	for _, row := range r.Rows {
		if row.System == system && row.Metric == metric {
			return true
		}
	}
	return false
}

// metrics lists the metrics in the order they were first measured.
func (r *benchReport) metrics() []string {
	var out []string
	seen := map[string]bool{}
	for _, row := range r.Rows {
		if !seen[row.Metric] {
			seen[row.Metric] = true
			out = append(out, row.Metric)
		}
	}
	return out
}

// benchTarget is one of the targets lcast is held to: a check of the report.
type benchTarget struct {
	metric string // a prefix of the metrics it applies to
	suffix string // and their suffix
	what   string
	met    func(r *benchReport, metric string) bool
}

var benchTargets = []benchTarget{
	{"1->2 saturation: delivered", "", ">= 1.0x vxlan, >= 4x tinc", func(r *benchReport, m string) bool {
		l := r.value("lcast", m)
		return l >= r.value("vxlan", m) && l >= 4*r.value("tinc", m)
	}},
	{"1->2 at", "loss %", "loss <= 0.1% at 90% of lcast's saturation", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 0.1 }},
	{"4->3 saturated:", "", "<= 100 ms", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 100 }},
	{"join to first packet", "", "<= 5 ms", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 5 }},
	{"leave to stop", "", "<= 100 ms", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 100 }},
	{"added latency p50", "", "<= 100 us", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 100 }},
	{"100000 groups (mldinject): at every peer, s after the first", "", "<= 2 s", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 2 }},
	{"100000 groups (mldinject): joining daemon's RSS", "", "<= 128 MiB", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 128 }},
	{"100000 groups (mldinject): largest peer's RSS", "", "<= 128 MiB", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 128 }},
	{"largest daemon's peak RSS", "", "<= 128 MiB", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 128 }},
	{"flood of", "peak RSS MiB", "<= 128 MiB", func(r *benchReport, m string) bool { return r.value("lcast", m) <= 128 }},
	{"TCP site 1 -> site 2: Mbit/s", "", ">= 1.0x wireguard-go", func(r *benchReport, m string) bool {
		return r.value("lcast", m) >= r.value("wireguard-go", m)
	}},
}

// target returns the target that applies to metric, with whether lcast met
// it, or "".
func (r *benchReport) target(metric string) string {
	for _, t := range benchTargets {
		if strings.HasPrefix(metric, t.metric) && strings.HasSuffix(metric, t.suffix) {
			verdict := "met"
			if !t.met(r, metric) {
				verdict = "MISSED"
			}
			return t.what + ": " + verdict
		}
	}
	return ""
}

// print writes the figures as a table: a column per system, lcast's ratios
// to the others, and the target.
func (r *benchReport) print(out io.Writer) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "\nside by side (%s, kernel %s, %d CPUs)\t", r.Date, r.Kernel, r.CPUs)
	for _, s := range benchSystems {
		fmt.Fprintf(w, "%s\t", s)
	}
	for _, s := range benchBaselines {
		fmt.Fprintf(w, "lcast/%s\t", s)
	}
	fmt.Fprintf(w, "\ttarget\n")
	for _, m := range r.metrics() {
		fmt.Fprintf(w, "%s\t", m)
		for _, s := range benchSystems {
			if r.has(s, m) {
				fmt.Fprintf(w, "%s\t", figure(r.value(s, m)))
			} else {
				fmt.Fprint(w, "-\t")
			}
		}
		for _, s := range benchBaselines {
			if l, o := r.value("lcast", m), r.value(s, m); r.has("lcast", m) && r.has(s, m) && o != 0 {
				fmt.Fprintf(w, "%.2fx\t", l/o)
			} else {
				fmt.Fprint(w, "\t")
			}
		}
		fmt.Fprintf(w, "\t%s\n", r.target(m))
	}
	w.Flush()
}

// figure formats v with the precision its size needs.
func figure(v float64) string {
	switch {
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// save writes results.json and fanout.png (delivered datagrams per
// receiver, by fan-out and rate, per system) into dir.
func (r *benchReport) save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	var metrics, labels []string
	for _, m := range r.metrics() {
		if strings.HasSuffix(m, "delivered/s per receiver") {
			metrics = append(metrics, m)
			labels = append(labels, strings.TrimSuffix(m, ": delivered/s per receiver"))
		}
	}
	p := plot.New()
	p.Title.Text = "Delivered datagrams/s per receiver (1200 bytes)"
	p.Y.Label.Text = "datagrams/s"
	width := vg.Points(14)
	charted := slices.DeleteFunc(slices.Clone(benchSystems), func(s string) bool { return len(metrics) == 0 || !r.has(s, metrics[0]) })
	for i, s := range charted {
		vals := make(plotter.Values, len(metrics))
		for j, m := range metrics {
			vals[j] = r.value(s, m)
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		bars.Offset = width * vg.Length(2*i-len(charted)+1) / 2
		p.Add(bars)
		p.Legend.Add(s, bars)
	}
	p.Legend.Top = true
	p.NominalX(labels...)
	return p.Save(10*vg.Inch, 5*vg.Inch, filepath.Join(dir, "fanout.png"))
}
