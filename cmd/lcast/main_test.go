package main

import (
	"os"
	"os/exec"
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
