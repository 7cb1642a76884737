package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// k8sObject is one document of a manifest, as generic YAML.
type k8sObject = map[string]any

// dig walks keys (map keys, or list indexes as ints) and returns what is
// there, nil when any step is missing.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func digString(v any, path ...any) string { s, _ := dig(v, path...).(string); return s }

// readManifest decodes every document of a multi-document YAML file.
func readManifest(t *testing.T, path string) []k8sObject {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []k8sObject
	for {
		var d k8sObject
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, len(docs)+1, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// TestK8sManifests parses every manifest in k8s/ and checks what ties its
// parts together: each document is a Kubernetes object; the postern
// config in each ConfigMap loads and passes validation whole (the
// PostgreSQL one with its secrets in place); each workload probes /readyz and
// /healthz on the admin listener, drains in its preStop hook within its
// grace period, reads that ConfigMap, and mounts every file the config
// names; the Service's ports are the workloads' SMTP listeners.
func TestK8sManifests(t *testing.T) {
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("k8s/*.yaml: %v %v, want the Service, the StatefulSet and the Deployment", files, err)
	}
	var containerPorts []string // port names of every workload's container
	var services []k8sObject
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			docs := readManifest(t, f)
			configsByName := map[string]k8sObject{}
			for i, d := range docs {
				if digString(d, "apiVersion") == "" || digString(d, "kind") == "" || digString(d, "metadata", "name") == "" {
					t.Errorf("document %d has no apiVersion, kind or metadata.name", i+1)
				}
				switch digString(d, "kind") {
				case "ConfigMap":
					configsByName[digString(d, "metadata", "name")] = d
				case "Service":
					if digString(d, "spec", "type") == "LoadBalancer" {
						services = append(services, d)
					}
				}
			}
			for _, d := range docs {
				switch kind := digString(d, "kind"); kind {
				case "Deployment", "StatefulSet":
					containerPorts = append(containerPorts, checkWorkload(t, d, configsByName)...)
				}
			}
		})
	}
	if len(services) != 1 {
		t.Fatalf("%d Services of type LoadBalancer, want 1", len(services))
	}
	svc := services[0]
	if got := digString(svc, "spec", "externalTrafficPolicy"); got != "Local" {
		t.Errorf("the LoadBalancer's externalTrafficPolicy is %q, want Local", got)
	}
	if digString(svc, "spec", "selector", "app.kubernetes.io/name") != "postern" {
		t.Errorf("the LoadBalancer does not select app.kubernetes.io/name: postern")
	}
	ports, _ := dig(svc, "spec", "ports").([]any)
	for _, p := range ports {
		target := digString(p, "targetPort")
		n := 0
		for _, name := range containerPorts {
			if name == target {
				n++
			}
		}
		if target == "" || n != 2 {
			t.Errorf("the LoadBalancer's target port %q is named in %d workloads, want 2", target, n)
		}
	}
}

// checkWorkload checks a Deployment or StatefulSet and returns the names
// of its container's ports.
func checkWorkload(t *testing.T, w k8sObject, configMaps map[string]k8sObject) []string {
	t.Helper()
	kind := digString(w, "kind")
	pod := dig(w, "spec", "template", "spec")
	if digString(w, "spec", "template", "metadata", "labels", "app.kubernetes.io/name") != "postern" {
		t.Errorf("%s: pods not labelled app.kubernetes.io/name: postern (the Service selects them so)", kind)
	}
	c := dig(pod, "containers", 0)
	if c == nil {
		t.Fatalf("%s: no container", kind)
	}

	// The config: POSTERN_CONFIG names a file in the ConfigMap's mount.
	var configPath string
	envs, _ := dig(c, "env").([]any)
	for _, e := range envs {
		if digString(e, "name") == "POSTERN_CONFIG" {
			configPath = digString(e, "value")
		}
	}
	mounts := map[string]string{} // volume name → mount path
	ms, _ := dig(c, "volumeMounts").([]any)
	for _, m := range ms {
		mounts[digString(m, "name")] = digString(m, "mountPath")
	}
	volumes := map[string]any{}
	vs, _ := dig(pod, "volumes").([]any)
	for _, v := range vs {
		volumes[digString(v, "name")] = v
	}
	var cmName string
	for name, path := range mounts {
		if filepath.Dir(configPath) == path {
			cmName = digString(volumes[name], "configMap", "name")
		}
	}
	cm, ok := configMaps[cmName]
	if !ok {
		t.Fatalf("%s: POSTERN_CONFIG=%q is not in a ConfigMap of the same file", kind, configPath)
	}
	text := digString(cm, "data", filepath.Base(configPath))
	if text == "" {
		t.Fatalf("%s: ConfigMap %s has no key %s", kind, cmName, filepath.Base(configPath))
	}
	cfg, files := loadK8sConfig(t, cmName, text)

	// Every file the config names is in a mount; data_dir is a mount.
	files["admin.token_file"], files["tls.cert_file"], files["tls.key_file"] = cfg.Admin.TokenFile, cfg.TLS.CertFile, cfg.TLS.KeyFile
	files["auth.users_file"], files["data_dir"] = cfg.Auth.UsersFile, cfg.DataDir+"/"
	for key, path := range files {
		if path == "" || path == "/" {
			continue
		}
		if !slices.ContainsFunc(slices.Collect(mapValues(mounts)), func(m string) bool { return strings.HasPrefix(path, m+"/") }) {
			t.Errorf("%s: %s %s is in no volume mount", kind, key, path)
		}
	}
	if kind == "StatefulSet" {
		claim := digString(w, "spec", "volumeClaimTemplates", 0, "metadata", "name")
		if claim == "" || mounts[claim] != cfg.DataDir {
			t.Errorf("StatefulSet: data_dir %s is not the mount of its PersistentVolumeClaim (%q at %q)", cfg.DataDir, claim, mounts[claim])
		}
	}

	// The ports: each named container port is the listener's.
	listen := map[string]string{"submission": cfg.Listen.Submission, "submissions": cfg.Listen.Submissions, "admin": cfg.Listen.Admin}
	var names []string
	ps, _ := dig(c, "ports").([]any)
	for _, p := range ps {
		name := digString(p, "name")
		names = append(names, name)
		_, port, _ := net.SplitHostPort(listen[name])
		if got := fmt.Sprint(dig(p, "containerPort")); got != port {
			t.Errorf("%s: container port %s is %s, the config listens on %q", kind, name, got, listen[name])
		}
	}

	// Probes on the admin listener, which must be reachable from the
	// kubelet and so serve TLS.
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		get := dig(c, probe, "httpGet")
		if digString(get, "path") != path || digString(get, "port") != "admin" || digString(get, "scheme") != "HTTPS" {
			t.Errorf("%s: %s is %v, want GET %s on the admin port over HTTPS", kind, probe, get, path)
		}
	}
	if !cfg.Admin.TLS {
		t.Errorf("%s: admin.tls is off, but the probes use HTTPS", kind)
	}

	// preStop drains within the grace period, with room for
	// shutdown_timeout after the drain's timeout.
	cmd, _ := dig(c, "lifecycle", "preStop", "exec", "command").([]any)
	var drainTimeout time.Duration
	for i, a := range cmd {
		if a == "--timeout" && i+1 < len(cmd) {
			drainTimeout, _ = time.ParseDuration(fmt.Sprint(cmd[i+1]))
		}
	}
	if len(cmd) < 2 || cmd[1] != "drain" || drainTimeout == 0 {
		t.Errorf("%s: preStop runs %v, want postern drain --timeout D", kind, cmd)
	}
	grace, _ := dig(pod, "terminationGracePeriodSeconds").(int)
	if need := drainTimeout + cfg.ShutdownTimeout.D(); time.Duration(grace)*time.Second <= need {
		t.Errorf("%s: terminationGracePeriodSeconds %d, want more than the drain's %s plus shutdown_timeout %s",
			kind, grace, drainTimeout, cfg.ShutdownTimeout.D())
	}
	if len(cfg.ListenProxyProtocolFrom) == 0 {
		t.Errorf("%s: listen_proxy_protocol_from is empty: behind the LoadBalancer every client would be its address", kind)
	}
	return names
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// loadK8sConfig loads a ConfigMap's postern config, whole. The secrets
// a shared-queue config names (queue.postgres.dsn_file,
// limits.redis.password_file) are mounted from a Secret in the cluster:
// here each is a file of the test's with a placeholder, at the same
// place in the config. files are those paths as the manifest gives them,
// by key.
func loadK8sConfig(t *testing.T, name, text string) (cfg *Config, files map[string]string) {
	t.Helper()
	dir := t.TempDir()
	var raw map[string]any
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		t.Fatalf("ConfigMap %s: %v", name, err)
	}
	files = map[string]string{}
	if dig(raw, "queue") != nil || dig(raw, "limits", "redis") != nil {
		if got := digString(raw, "queue", "backend"); got != "postgres" {
			t.Errorf("ConfigMap %s: queue.backend is %q, want postgres", name, got)
		}
		for _, key := range [][]any{{"queue", "postgres", "dsn_file"}, {"queue", "postgres", "lease"}, {"limits", "redis", "address"}, {"limits", "redis", "password_file"}} {
			v := digString(raw, key...)
			if v == "" {
				t.Errorf("ConfigMap %s: %v is missing", name, key)
				continue
			}
			k := key[len(key)-1]
			if k != "dsn_file" && k != "password_file" {
				continue
			}
			files[strings.Trim(strings.ReplaceAll(fmt.Sprint(key), " ", "."), "[]")] = v
			local := filepath.Join(dir, fmt.Sprint(k))
			if err := os.WriteFile(local, []byte("postgres://postern:placeholder@db:5432/postern\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			text = strings.ReplaceAll(text, v, local)
		}
	}
	path := filepath.Join(dir, "postern.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("ConfigMap %s: %v", name, err)
	}
	return cfg, files
}
