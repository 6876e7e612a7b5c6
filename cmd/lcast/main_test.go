package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const manPage = "../../deploy/man/lcast.8"

// lcast(8) documents every command and flag there is, and no other.
func TestManPageMatchesCommands(t *testing.T) {
	doc, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	page := string(doc)
	commands := regexp.MustCompile(`(?m)^\.TP\n\.B (\w+)\n`).FindAllStringSubmatch(page[strings.Index(page, ".SH COMMANDS"):strings.Index(page, ".SH OPTIONS")], -1)
	var documented []string
	for _, m := range commands {
		documented = append(documented, m[1])
	}
	flags := map[string]bool{"help": true, "h": true}
	var names []string
	for _, c := range newApp().Commands {
		names = append(names, c.Name)
		for _, f := range c.Flags {
			for _, n := range f.Names() {
				flags[n] = true
				dashes := `\-\-`
				if len(n) == 1 {
					dashes = `\-`
				}
				if !strings.Contains(page, dashes+n) {
					t.Errorf("lcast %s's flag %s%s is not in lcast(8)", c.Name, strings.ReplaceAll(dashes, `\`, ""), n)
				}
			}
		}
		if !strings.Contains(page, ".B lcast "+c.Name) {
			t.Errorf("lcast %s is not in lcast(8)'s synopsis", c.Name)
		}
	}
	if !slices.Equal(documented, names) {
		t.Errorf("lcast(8) describes commands %v; lcast has %v", documented, names)
	}
	for _, m := range regexp.MustCompile(`\\-\\?-?([a-z]+)\b`).FindAllStringSubmatch(page[strings.Index(page, ".SH OPTIONS"):strings.Index(page, ".SH EXIT STATUS")], -1) {
		if !flags[m[1]] {
			t.Errorf("lcast(8) documents a flag %q that no command has", m[1])
		}
	}
}

// Both man pages render without a warning.
func TestManPagesRender(t *testing.T) {
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("groff is not installed (Debian: groff-base)")
	}
	for _, p := range []string{manPage, "../../deploy/man/lcast.toml.5"} {
		out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", p).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v\n%s", p, err, out)
		}
	}
}

// The bash completion offers the commands and each command's flags.
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	dir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", dir+"/lcast", ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for line, want := range map[string]string{
		"lcast ":          "genkey pubkey up reload status",
		"lcast st":        "status",
		"lcast status --": "--config --json --help",
		"lcast up --d":    "--debug",
	} {
		script := `source ../../deploy/completions/lcast.bash
read -ra COMP_WORDS <<< "$LINE"
[[ $LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]}-1))
_lcast
echo "${COMPREPLY[*]}"`
		cmd := exec.Command("bash", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "LINE="+line)
		out, err := cmd.CombinedOutput()
		if got := strings.TrimSpace(string(out)); err != nil || got != want {
			t.Errorf("completing %q: got %q (%v), want %q", line, got, err, want)
		}
	}
}

// genkey --file makes a key once, 0600, and later calls print the same
// public key; a file it cannot trust or parse is an error and stays as it was.
func TestGenkeyFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/lc0.key"
	first, err := keyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new key file has mode %04o, want 0600", fi.Mode().Perm())
	}
	again, err := keyFile(path)
	if err != nil || again != first {
		t.Errorf("second call: %v, %v; want the first key", again.PublicKey(), err)
	}
	if leftovers, _ := filepath.Glob(dir + "/.lcast-key-*"); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	for name, c := range map[string]struct {
		text string
		mode os.FileMode
		want string
	}{
		"readable by others": {first.String() + "\n", 0o644, "accessible by group or others"},
		"not a key":          {"hello\n", 0o600, "not a base64-encoded 32-byte key"},
		"empty":              {"", 0o600, "not a base64-encoded 32-byte key"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(c.text), c.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, c.mode)
		if _, err := keyFile(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
		if b, _ := os.ReadFile(p); string(b) != c.text {
			t.Errorf("%s: file changed to %q", name, b)
		}
	}
	if _, err := keyFile(filepath.Join(dir, "no-such-dir", "k")); err == nil {
		t.Error("a key in a missing directory: no error")
	}
}
