package criu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestManagerOf(t *testing.T) {
	dir := t.TempDir()
	podman := filepath.Join(dir, "podman")
	os.MkdirAll(podman, 0o700)
	os.WriteFile(filepath.Join(podman, "config.json"), []byte(`{"annotations":{"io.container.manager":"libpod"}}`), 0o600)
	for bundle, want := range map[string]string{
		podman: "podman",
		"/run/containerd/io.containerd.runtime.v2.task/moby/abc":   "docker",
		"/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc": "kubelet (containerd's k8s.io)",
		"/run/containerd/io.containerd.runtime.v2.task/default/x":  "containerd",
		dir: "",
	} {
		if got := managerOf(bundle); got != want {
			t.Errorf("managerOf(%s) = %q; want %q", bundle, got, want)
		}
	}
	if !strings.Contains(managerAdvice("kubelet (containerd's k8s.io)"), "drain") || !hasBackend("podman") || !hasBackend("containerd") || !hasBackend("kubelet (containerd's k8s.io)") || hasBackend("") {
		t.Fatal("advice")
	}
}
