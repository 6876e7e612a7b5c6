package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/librecast/lcast/peer"
)

func lcast(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(lcastBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestGenkeyPubkey(t *testing.T) {
	priv, code := lcast(t, "", "genkey")
	if code != 0 {
		t.Fatalf("genkey: %d %s", code, priv)
	}
	k, err := peer.ParseKey(strings.TrimSpace(priv))
	if err != nil {
		t.Fatalf("genkey printed %q: %v", priv, err)
	}
	pub, code := lcast(t, priv, "pubkey")
	if code != 0 || strings.TrimSpace(pub) != k.PublicKey().String() {
		t.Fatalf("pubkey = %q (exit %d), want %s", pub, code, k.PublicKey())
	}
}

func TestCLIMisuse(t *testing.T) {
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"unknown command", "", []string{"bogus"}, 2, `unknown command "bogus"`},
		{"bad private key on stdin", "not a key\n", []string{"pubkey"}, 1, "not a base64-encoded 32-byte key"},
		{"empty stdin", "", []string{"pubkey"}, 1, "not a base64-encoded 32-byte key"},
		{"genkey with arguments", "", []string{"genkey", "x"}, 1, "genkey takes no arguments"},
		{"up without config", "", []string{"up"}, 1, `Required flag "config" not set`},
		{"status without config", "", []string{"status"}, 1, `Required flag "config" not set`},
		{"missing config file", "", []string{"status", "-c", "/nonexistent.toml"}, 1, "read config: open /nonexistent.toml"},
		{"unknown flag", "", []string{"up", "--bogus"}, 1, "flag provided but not defined: -bogus"},
		{"up with arguments", "", []string{"up", "-c", "x.toml", "extra"}, 1, `up takes no arguments, got ["extra"]`},
		{"status with arguments", "", []string{"status", "-c", "x.toml", "a"}, 1, `status takes no arguments, got ["a"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := lcast(t, tt.stdin, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, out, tt.code, tt.want)
			}
		})
	}
}

func TestHelpIsComplete(t *testing.T) {
	out, code := lcast(t, "", "--help")
	if code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, cmd := range []string{"genkey", "pubkey", "up", "status"} {
		if !strings.Contains(out, cmd) {
			t.Errorf("lcast --help does not list %s", cmd)
		}
		sub, code := lcast(t, "", cmd, "--help")
		if code != 0 || !strings.Contains(sub, "lcast "+cmd) || !strings.Contains(sub, "DESCRIPTION") {
			t.Errorf("lcast %s --help (exit %d):\n%s", cmd, code, sub)
		}
	}
	for _, flag := range []string{"--config FILE", "--debug"} {
		if sub, _ := lcast(t, "", "up", "--help"); !strings.Contains(sub, flag) {
			t.Errorf("lcast up --help lacks %s", flag)
		}
	}
	if sub, _ := lcast(t, "", "status", "--help"); !strings.Contains(sub, "--json") {
		t.Error("lcast status --help lacks --json")
	}
}
