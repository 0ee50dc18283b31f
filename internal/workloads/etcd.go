package workloads

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// StartEtcd runs a real etcd (Debian's etcd-server, which hack/setup.sh
// installs) of one member on free local ports, its data in a temporary
// directory, stopped at cleanup, and returns its client endpoint
// (HOST:PORT).
func StartEtcd(t testing.TB) string {
	t.Helper()
	bin := testenv.RequireTool(t, "etcd")
	client := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	cmd := exec.Command(bin, "--name", "ckpt-test", "--data-dir", t.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "ckpt-test="+peer, "--log-level", "warn")
	logs, err := os.CreateTemp(t.TempDir(), "etcd-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(client + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return client[len("http://"):]
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(logs.Name())
	t.Fatalf("etcd does not answer at %s: %s", client, TailLines(string(b), 10))
	return ""
}
