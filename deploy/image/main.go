// Command image builds lcast's container image offline, as make image runs
// it: one layer holding the static lcast binary and the directories the
// DaemonSet in deploy/k8s mounts over, no base image (nothing is pulled),
// and lcast itself as the entrypoint (the image has no shell). It writes an
// OCI image layout as a tar archive (an "oci-archive", which podman load
// and skopeo read) whose one manifest is annotated with the image's
// reference, and builds the same bytes from the same inputs: every time in
// it is the -created time.
//
// Usage: go run . -bin FILE -ref REF -version V -revision R -created RFC3339 -o FILE
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// spec is what goes into the image.
type spec struct {
	bin      string    // the lcast binary, statically linked
	ref      string    // the image's reference, e.g. localhost/lcast:1.2.3
	version  string    // lcast's version, for the labels
	revision string    // the git commit it was built from
	arch     string    // GOARCH of the binary
	created  time.Time // the commit's time, for reproducible output
}

// Config is the configuration file lcast reads when the image runs with
// no arguments: one lcast.toml(5) per interface, as lcast@.service reads.
const Config = "/etc/lcast/lc0.toml"

func main() {
	var s spec
	var created, out string
	flag.StringVar(&s.bin, "bin", "lcast", "the static lcast `binary`")
	flag.StringVar(&s.ref, "ref", "", "the image's `reference`")
	flag.StringVar(&s.version, "version", "0.0.0", "lcast's `version`")
	flag.StringVar(&s.revision, "revision", "", "the git `commit` built")
	flag.StringVar(&s.arch, "arch", runtime.GOARCH, "the binary's `GOARCH`")
	flag.StringVar(&created, "created", "", "the image's creation `time` (RFC 3339), the commit's for reproducible images")
	flag.StringVar(&out, "o", "", "write the oci-archive to `FILE`")
	flag.Parse()
	if err := run(s, created, out); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(s spec, created, out string) error {
	if s.ref == "" || out == "" || flag.NArg() > 0 {
		return fmt.Errorf("usage: image -bin FILE -ref REF -o FILE [-version V -revision R -created TIME]")
	}
	var err error
	if s.created, err = time.Parse(time.RFC3339, created); err != nil {
		return fmt.Errorf("-created: %w", err)
	}
	img, err := build(s)
	if err != nil {
		return err
	}
	return writeArchive(img, s, out)
}

// build returns the image: one layer, lcast's entrypoint and labels.
func build(s spec) (v1.Image, error) {
	bin, err := os.ReadFile(s.bin)
	if err != nil {
		return nil, err
	}
	files, err := rootfs(bin, s.created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(files)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: s.created},
			CreatedBy: "make image: lcast " + s.version,
			Comment:   "the static lcast binary; no base image",
		},
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = s.arch
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: s.created}
	cfg.Config = v1.Config{
		Entrypoint: []string{"/usr/bin/lcast"},
		Cmd:        []string{"up", "-c", Config},
		Env:        []string{"PATH=/usr/bin"},
		WorkingDir: "/",
		// lcast removes lc0 and its routes on SIGTERM.
		StopSignal: "SIGTERM",
		Labels:     labels(s),
	}
	return mutate.ConfigFile(img, cfg)
}

// labels are the image's OCI annotations, as labels.
func labels(s spec) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "lcast",
		"org.opencontainers.image.description": "IPv6 multicast across the Internet through the lc0 interface. Runs `lcast up -c " + Config + "`; needs NET_ADMIN and /dev/net/tun.",
		"org.opencontainers.image.version":     s.version,
		"org.opencontainers.image.revision":    s.revision,
		"org.opencontainers.image.created":     s.created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.source":      "https://github.com/librecast/lcast",
	}
}

// entry is one file or directory of the image's root file system.
type entry struct {
	name string
	mode int64
	data []byte // nil for a directory
}

// rootfs returns the layer's tar: lcast, and the directories the
// DaemonSet mounts its configuration, key and control socket on (a
// read-only root file system cannot make them).
func rootfs(bin []byte, mtime time.Time) ([]byte, error) {
	entries := []entry{
		{name: "etc/", mode: 0o755},
		{name: "etc/lcast/", mode: 0o700},
		{name: "run/", mode: 0o755},
		{name: "run/lcast/", mode: 0o755},
		{name: "usr/", mode: 0o755},
		{name: "usr/bin/", mode: 0o755},
		{name: "usr/bin/lcast", mode: 0o755, data: bin},
		{name: "var/", mode: 0o755},
		{name: "var/lib/", mode: 0o755},
		{name: "var/lib/lcast/", mode: 0o700},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: mtime, Format: tar.FormatPAX, Typeflag: tar.TypeDir}
		if e.data != nil {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeArchive writes img as an OCI image layout, tarred into out, its
// manifest annotated with the reference that podman load names it by.
func writeArchive(img v1.Image, s spec, out string) error {
	dir, err := os.MkdirTemp("", "lcast-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": s.ref,
		"org.opencontainers.image.created":  s.created.UTC().Format(time.RFC3339),
	})); err != nil {
		return err
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	err = tarDir(f, dir, s.created)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// tarDir writes the files below dir to w as a tar archive, in lexical
// order, owned by root, with mtime as every time.
func tarDir(w io.Writer, dir string, mtime time.Time) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: mtime, Format: tar.FormatPAX, Typeflag: tar.TypeReg}
		if d.IsDir() {
			h.Name, h.Mode, h.Typeflag = h.Name+"/", 0o755, tar.TypeDir
			return tw.WriteHeader(h)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
