package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The check accepts lcast's manifest and refuses each way of breaking it,
// with an error that says what is wrong.
func TestCheck(t *testing.T) {
	manifest, err := os.ReadFile("../lcast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(manifest)
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"the manifest as it is", "", "", ""},
		{"unknown field", "      hostNetwork: true", "      hostNetwork: true\n      hostNetwrk: true", `document 3: DaemonSet: error unmarshaling JSON: while decoding JSON: json: unknown field "hostNetwrk"`},
		{"wrong type", "terminationGracePeriodSeconds: 10", "terminationGracePeriodSeconds: ten", "DaemonSet: error unmarshaling JSON"},
		{"missing required field", "        - name: lcast\n", "        - \n", "spec.template.spec.containers[0].name in body is required"},
		{"number for a string", "type: CharDevice", "type: 7", "cannot unmarshal number into Go struct field HostPathVolumeSource"},
		{"pod network", "hostNetwork: true", "hostNetwork: false", "hostNetwork is not true"},
		{"no NET_ADMIN", `add: ["NET_ADMIN"]`, `add: ["NET_RAW"]`, "does not add the capability"},
		{"no tun", "path: /dev/net/tun", "path: /dev/net/tan", "/dev/net/tun is not mounted"},
		{"config map not defined", "configMap:\n            name: lcast-config", "configMap:\n            name: lcast-other", "names config map lcast-other, which the manifest does not define"},
		{"a shared Secret of keys", "configMap:\n            name: lcast-config", "secret:\n            secretName: lcast-keys", "volume config mounts Secret lcast-keys: a DaemonSet's pods on every node get the same Secret"},
		{"a Secret in the environment", "            - name: NODE_NAME\n", "            - name: KEY\n              valueFrom:\n                secretKeyRef:\n                  name: lcast-keys\n                  key: worker-1\n            - name: NODE_NAME\n", "container lcast sets KEY from Secret lcast-keys"},
		{"a key in the config map", "worker-1.toml: |\n    private_key_file = \"/var/lib/lcast/lc0.key\"", "worker-1.toml: |\n    private_key = \"REPLACE\"", "worker-1.toml holds a private key"},
		{"the key not on the node", "            - name: key\n              mountPath: /var/lib/lcast\n              readOnly: true", "            - name: key\n              mountPath: /var/lib/other\n              readOnly: true", "worker-1.toml: private_key_file is not in a hostPath directory"},
		{"selector", "      labels:\n        app.kubernetes.io/name: lcast\n    spec:", "      labels:\n        app.kubernetes.io/name: other\n    spec:", "does not match the pod template's labels"},
		{"two images", "          image: localhost/lcast:VERSION\n          command: [\"/usr/bin/lcast\"]", "          image: localhost/other:1\n          command: [\"/usr/bin/lcast\"]", "container lcast runs image localhost/other:1, want localhost/lcast:VERSION"},
		{"a shell the image does not have", `command: ["/usr/bin/lcast", "genkey"`, `command: ["/bin/sh", "-c", "lcast genkey"`, `container genkey runs ["/bin/sh" "-c" "lcast genkey"`},
		{"unknown kind", "kind: Namespace", "kind: Namespce", "v1 Namespce: not a kind this check knows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.old != "" && strings.Count(doc, tc.old) != 1 {
				t.Fatalf("the manifest has %q %d times, want once", tc.old, strings.Count(doc, tc.old))
			}
			file := filepath.Join(t.TempDir(), "m.yaml")
			if err := os.WriteFile(file, []byte(strings.Replace(doc, tc.old, tc.new, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			err := checkFile(file)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}
