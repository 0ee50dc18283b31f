package criu

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
)

// managerOf names the container manager that created the runc container
// whose bundle is bundle ("" for a bare runc container): podman's
// libpod annotation, or a bundle under containerd's task directory (its
// moby namespace is Docker's). Such a container suspended and restored
// behind its manager's back would leave the manager's records wrong.
func managerOf(bundle string) string {
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if b, err := os.ReadFile(filepath.Join(bundle, "config.json")); err == nil {
		json.Unmarshal(b, &spec)
	}
	switch {
	case spec.Annotations["io.container.manager"] == "libpod":
		return "podman"
	case strings.Contains(bundle, "/io.containerd.runtime.v2.task/moby/"):
		return "docker"
	case spec.Annotations["io.kubernetes.cri.container-type"] != "" || strings.Contains(bundle, "/io.containerd.runtime.v2.task/k8s.io/"):
		return "kubelet (containerd's k8s.io)"
	case strings.Contains(bundle, "/io.containerd.runtime.v2.task/"):
		return "containerd"
	}
	return ""
}

// hasBackend says whether ckpt suspends the containers of manager through
// a backend of its own, through the manager: podman's share runc's
// default root with bare runc containers, and only the podman backend may
// list them. kubelet's are the containerd backend's, which refuses them.
func hasBackend(manager string) bool {
	switch manager {
	case "podman", "docker", "containerd", "kubelet (containerd's k8s.io)":
		return true
	}
	return false
}

// managerAdvice says what the operator can do about a container of
// manager.
func managerAdvice(manager string) string {
	switch manager {
	case "kubelet (containerd's k8s.io)":
		return "kubelet would recreate its pod: drain the node as usual (kubectl drain)"
	case "docker":
		return "Docker's containers are suspended by the docker backend, through dockerd (point --runc-root elsewhere)"
	case "podman":
		return "podman's containers are suspended by the podman backend, through podman"
	case "containerd":
		return "containerd's containers are suspended by the containerd backend, through containerd"
	default:
		return "ckpt has no " + manager + " backend yet; stop it before the update and start it after, or leave it out with --only"
	}
}
