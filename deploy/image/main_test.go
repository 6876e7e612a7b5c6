package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// The archive holds one image: lcast as entrypoint, labelled, with its
// binary and the DaemonSet's mount points, named by its reference; the
// same inputs give the same bytes.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "lcast")
	if err := os.WriteFile(bin, []byte("\x7fELF not really"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := spec{bin: bin, ref: "localhost/lcast:1.2.3", version: "1.2.3", revision: "abc", arch: "arm64",
		created: time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)}
	var archives [][]byte
	for i := range 2 {
		out := filepath.Join(dir, "image"+string(rune('0'+i))+".tar")
		img, err := build(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeArchive(img, s, out); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		archives = append(archives, b)
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Error("two builds from the same inputs differ")
	}

	// Read the archive back as an OCI layout.
	unpacked := filepath.Join(dir, "layout")
	untar(t, archives[0], unpacked)
	index, err := layout.ImageIndexFromPath(unpacked)
	if err != nil {
		t.Fatal(err)
	}
	im, err := index.IndexManifest()
	if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != s.ref {
		t.Fatalf("index: %+v, %v", im, err)
	}
	img, err := index.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/bin/lcast"}) || !slices.Equal(cfg.Config.Cmd, []string{"up", "-c", Config}) ||
		cfg.Architecture != "arm64" || cfg.OS != "linux" || !cfg.Created.Time.Equal(s.created) {
		t.Errorf("config: %+v", cfg)
	}
	if l := cfg.Config.Labels; l["org.opencontainers.image.version"] != "1.2.3" || l["org.opencontainers.image.revision"] != "abc" {
		t.Errorf("labels: %v", l)
	}
	files := map[string]int64{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h.Mode // Extract drops directories' trailing slash
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(s.created) {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	for name, mode := range map[string]int64{"usr/bin/lcast": 0o755, "etc/lcast": 0o700, "var/lib/lcast": 0o700, "run/lcast": 0o755} {
		if got, ok := files[name]; !ok || got != mode {
			t.Errorf("%s: mode %o (present %v), want %o", name, got, ok, mode)
		}
	}
}

func untar(t *testing.T, archive []byte, dir string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			err = os.MkdirAll(path, 0o755)
		} else {
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(path, b, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
