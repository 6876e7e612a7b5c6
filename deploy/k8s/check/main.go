// Command check validates Kubernetes manifests offline, as CI runs it on
// deploy/k8s (make check-deploy): each document must be a kind it knows
// (Namespace, ConfigMap, Secret, DaemonSet), decode strictly into the API's
// Go types (no unknown field, no wrong type), and validate against the
// OpenAPI schema the Kubernetes API server publishes for it (required
// fields, types, formats), which client-go embeds for its own tests. It then
// checks what lcast's DaemonSet must have: the host's network, NET_ADMIN,
// /dev/net/tun, a configuration from a ConfigMap the manifest defines, each
// node's private key in a file on that node (a hostPath), no private key in
// the ConfigMap and no Secret in the pods (every pod of a DaemonSet gets the
// same Secret, so each node would hold every node's key), and a selector
// that matches the pod template.
//
// Usage: go run . FILE...
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/openapi/openapitest"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"
	"sigs.k8s.io/yaml"
)

// kinds are the kinds the manifests may hold: the API path of their
// group-version's OpenAPI document, their schema's name, a new object.
var kinds = map[string]struct {
	path, schema string
	new          func() any
}{
	"v1/Namespace":      {"api/v1", "io.k8s.api.core.v1.Namespace", func() any { return new(corev1.Namespace) }},
	"v1/Secret":         {"api/v1", "io.k8s.api.core.v1.Secret", func() any { return new(corev1.Secret) }},
	"v1/ConfigMap":      {"api/v1", "io.k8s.api.core.v1.ConfigMap", func() any { return new(corev1.ConfigMap) }},
	"apps/v1/DaemonSet": {"apis/apps/v1", "io.k8s.api.apps.v1.DaemonSet", func() any { return new(appsv1.DaemonSet) }},
}

// wantImage is the image every container must name, from -image; empty
// means they must all name the same one.
var wantImage string

func main() {
	flag.StringVar(&wantImage, "image", "", "require every container to run `REF`, the image make image built")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: check [-image REF] FILE...")
		os.Exit(2)
	}
	failed := false
	for _, file := range flag.Args() {
		if err := checkFile(file); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			failed = true
		} else {
			fmt.Printf("%s: valid\n", file)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func checkFile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []any
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, err := checkDocument(doc)
		if err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		objs = append(objs, obj)
	}
	return checkLcast(objs)
}

// stripComments drops the comment lines of a YAML document.
func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// checkDocument decodes one document strictly into its kind's type and
// validates it against the kind's OpenAPI schema.
func checkDocument(doc []byte) (any, error) {
	var tm v1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	kind, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("%s %s: not a kind this check knows", tm.APIVersion, tm.Kind)
	}
	obj := kind.new()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	schema, err := openAPISchema(kind.path, kind.schema)
	if err != nil {
		return nil, err
	}
	var generic any
	if err := yaml.Unmarshal(doc, &generic); err != nil {
		return nil, err
	}
	res := validate.NewSchemaValidator(schema, nil, "", strfmt.Default).Validate(integers(generic))
	if !res.IsValid() {
		var msgs []string
		for _, e := range res.Errors {
			msgs = append(msgs, e.Error())
		}
		return nil, fmt.Errorf("%s: %s", tm.Kind, strings.Join(msgs, "; "))
	}
	return obj, nil
}

// parsed holds the component schemas of each OpenAPI document read, by
// API path: a document (megabytes of JSON) is parsed once.
var parsed = map[string]map[string]any{}

// componentSchemas returns the component schemas of the OpenAPI document
// of the API path, by name.
func componentSchemas(path string) (map[string]any, error) {
	if schemas, ok := parsed[path]; ok {
		return schemas, nil
	}
	paths, err := openapitest.NewEmbeddedFileClient().Paths()
	if err != nil {
		return nil, err
	}
	gv, ok := paths[path]
	if !ok {
		return nil, fmt.Errorf("no OpenAPI document for %s", path)
	}
	text, err := gv.Schema("application/json")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(text, &doc); err != nil {
		return nil, err
	}
	parsed[path] = doc.Components.Schemas
	return doc.Components.Schemas, nil
}

// integers turns the whole numbers of a decoded document into int64, as
// the API server decodes them (JSON decoding makes every number float64,
// which int-or-string fields refuse).
func integers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = integers(e)
		}
	case []any:
		for i, e := range v {
			v[i] = integers(e)
		}
	case float64:
		if v == float64(int64(v)) {
			return int64(v)
		}
	}
	return v
}

// openAPISchema returns the schema called name in the OpenAPI document of
// the API path, with every reference replaced by the schema it names (the
// validator does not follow references). A reference back into a schema
// being expanded (a recursive type) accepts anything.
func openAPISchema(path, name string) (*spec.Schema, error) {
	schemas, err := componentSchemas(path)
	if err != nil {
		return nil, err
	}
	const prefix = "#/components/schemas/"
	var expand func(v any, within []string) (any, error)
	expand = func(v any, within []string) (any, error) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				target := strings.TrimPrefix(ref, prefix)
				if slices.Contains(within, target) {
					return map[string]any{}, nil
				}
				s, ok := schemas[target]
				if !ok || target == ref {
					return nil, fmt.Errorf("%s: unresolved reference %s", path, ref)
				}
				return expand(s, append(within, target))
			}
			out := make(map[string]any, len(v))
			for k, e := range v {
				if k == "format" && e == "int-or-string" {
					continue // its oneOf says it; the validator knows no such format
				}
				x, err := expand(e, within)
				if err != nil {
					return nil, err
				}
				out[k] = x
			}
			return out, nil
		case []any:
			out := make([]any, len(v))
			for i, e := range v {
				x, err := expand(e, within)
				if err != nil {
					return nil, err
				}
				out[i] = x
			}
			return out, nil
		}
		return v, nil
	}
	if _, ok := schemas[name]; !ok {
		return nil, fmt.Errorf("no schema %s in %s", name, path)
	}
	expanded, err := expand(schemas[name], []string{name})
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(expanded)
	if err != nil {
		return nil, err
	}
	var schema spec.Schema
	if err := json.Unmarshal(raw, &schema); err != nil {
		return nil, err
	}
	return &schema, nil
}

// checkImages checks that every container runs lcast from one image, the
// one make image built if wantImage is set. That image holds lcast and no
// shell, so each container's command must be /usr/bin/lcast.
func checkImages(pod corev1.PodSpec, fail func(string, ...any)) {
	image := wantImage
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if image == "" {
			image = c.Image
		}
		if c.Image != image {
			fail("container %s runs image %s, want %s", c.Name, c.Image, image)
		}
		if len(c.Command) == 0 || c.Command[0] != "/usr/bin/lcast" {
			fail("container %s runs %q, not /usr/bin/lcast, the only program in lcast's image", c.Name, c.Command)
		}
	}
}

// checkLcast checks what lcast's DaemonSet needs.
func checkLcast(objs []any) error {
	configMaps := map[string]*corev1.ConfigMap{}
	var daemonSets []*appsv1.DaemonSet
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ConfigMap:
			configMaps[o.Namespace+"/"+o.Name] = o
		case *appsv1.DaemonSet:
			daemonSets = append(daemonSets, o)
		}
	}
	if len(daemonSets) != 1 {
		return fmt.Errorf("want one DaemonSet, found %d", len(daemonSets))
	}
	ds := daemonSets[0]
	pod := ds.Spec.Template.Spec
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	sel, err := v1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		fail("the selector %v does not match the pod template's labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	if !pod.HostNetwork {
		fail("hostNetwork is not true: lc0 would be the pod's, not the node's")
	}
	checkImages(pod, fail)
	if len(pod.Containers) != 1 {
		fail("want one container, found %d", len(pod.Containers))
		return errors.New(strings.Join(problems, "; "))
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil ||
		!slices.Contains(sc.Capabilities.Add, "NET_ADMIN") {
		fail("the container does not add the capability NET_ADMIN")
	} else if sc.Privileged != nil && *sc.Privileged {
		fail("the container is privileged: it needs one capability, not all")
	}
	for _, s := range podSecrets(pod) {
		fail("%s: a DaemonSet's pods on every node get the same Secret, so each node would hold every private key in it; "+
			"keep each node's key on the node (private_key_file on a hostPath, made by an init container)", s)
	}
	mounted := map[string]string{} // volume -> mount path
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = m.MountPath
	}
	hostDirs := map[string]bool{} // mount paths of hostPath directories
	var tun bool
	var config *corev1.ConfigMap
	for _, v := range pod.Volumes {
		switch {
		case v.HostPath != nil && v.HostPath.Path == "/dev/net/tun":
			tun = mounted[v.Name] == "/dev/net/tun" && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathCharDev
		case v.HostPath != nil && mounted[v.Name] != "":
			hostDirs[mounted[v.Name]] = true
		case v.ConfigMap != nil:
			cm := configMaps[ds.Namespace+"/"+v.ConfigMap.Name]
			if cm == nil {
				fail("volume %s names config map %s, which the manifest does not define in namespace %s", v.Name, v.ConfigMap.Name, ds.Namespace)
			} else if mounted[v.Name] != "" && strings.HasPrefix(strings.Join(c.Args, " "), "up -c "+mounted[v.Name]+"/") {
				config = cm
			}
		}
	}
	if !tun {
		fail("/dev/net/tun is not mounted from the host as a CharDevice")
	}
	if config == nil {
		fail("lcast up does not read its configuration from a mounted ConfigMap")
	} else {
		for _, name := range slices.Sorted(maps.Keys(config.Data)) {
			doc := config.Data[name]
			if inlineKey.MatchString(doc) {
				fail("config map %s: %s holds a private key (private_key): every node would get it; use private_key_file on the node", config.Name, name)
				continue
			}
			m := keyFile.FindStringSubmatch(doc)
			if m == nil || !hostDirs[path.Dir(m[1])] {
				fail("config map %s: %s: private_key_file is not in a hostPath directory mounted in the container, so the key would not stay on its node", config.Name, name)
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

var (
	inlineKey = regexp.MustCompile(`(?m)^\s*private_key\s*=`)
	keyFile   = regexp.MustCompile(`(?m)^\s*private_key_file\s*=\s*"([^"]+)"`)
)

// podSecrets names every Secret the pod's containers can read: volumes,
// projected volumes and environment variables.
func podSecrets(pod corev1.PodSpec) []string {
	var out []string
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			out = append(out, fmt.Sprintf("volume %s mounts Secret %s", v.Name, v.Secret.SecretName))
		}
		if v.Projected != nil {
			for _, p := range v.Projected.Sources {
				if p.Secret != nil {
					out = append(out, fmt.Sprintf("volume %s projects Secret %s", v.Name, p.Secret.Name))
				}
			}
		}
	}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				out = append(out, fmt.Sprintf("container %s takes its environment from Secret %s", c.Name, e.SecretRef.Name))
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				out = append(out, fmt.Sprintf("container %s sets %s from Secret %s", c.Name, e.Name, e.ValueFrom.SecretKeyRef.Name))
			}
		}
	}
	return out
}
