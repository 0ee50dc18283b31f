package criu_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// conversation is one TCP connection to testload kept open throughout.
type conversation struct {
	conn net.Conn
	r    *bufio.Reader
}

func converse(t *testing.T, addr string) *conversation {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &conversation{conn: conn, r: bufio.NewReader(conn)}
}

func (c *conversation) send(t *testing.T, line string) {
	t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c.conn, line); err != nil {
		t.Fatalf("send %q: %v", line, err)
	}
}

// expect reads one answer; TCP retransmits whatever was sent while the
// container was down, so the answer may take a few seconds.
func (c *conversation) expect(t *testing.T, want string) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := c.r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != want {
		t.Fatalf("on the established connection: got %q, %v; want %q", got, err, want)
	}
}

// TestEstablishedTCPConnectionSurvives keeps a connection from outside the
// container open across a suspend and resume, and across a rollback after
// the dump (which, with a connection, ends the container). The client
// talks while the container is down; the same connection answers after.
func TestEstablishedTCPConnectionSurvives(t *testing.T) {
	// CRIU locks dumped connections with iptables until they are restored.
	testenv.RequireTool(t, "iptables-restore")
	root := filepath.Join(t.TempDir(), "runc")
	b, logs := newBackendLogsCfg(t, root, func(c *criu.Config) {
		c.ProcessTrees = []string{fmt.Sprintf("/ckpt-tree-%d-*", os.Getpid())}
	})
	for _, tc := range []struct {
		name, kind   string
		resume, tree bool
	}{
		{"resume/dir", memregion.KindDir, true, false},
		{"resume/raw", memregion.KindRaw, true, false},
		{"rollback/raw", memregion.KindRaw, false, false},
		{"tree/resume/dir", memregion.KindDir, true, true},
		{"tree/rollback/dir", memregion.KindDir, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var c *workloads.Container
			w := hypervisors.Workload{}
			if tc.tree {
				c = startTree(t, 64)
				w.ID = "cgroup:/" + c.ID
			} else {
				c = workloads.StartContainer(t, root, workloads.Checkpointable, 64)
				w.ID = c.ID
			}
			p := &probe{c: c, logDir: logs, tree: tc.tree}
			conv := converse(t, c.Addr)
			conv.send(t, "echo before")
			conv.expect(t, "before")
			if err := b.Freeze(ctx, w); err != nil {
				t.Fatal(err)
			}
			frozenAt := p.Counter(t)
			r := testenv.Region(t, "", tc.kind, memregion.GiB)
			sink := hypervisors.RegionSink{Region: r, Prefix: "w"}
			raw, err := b.Dump(ctx, w, sink)
			if err != nil {
				b.Thaw(ctx, w)
				t.Fatalf("Dump: %v", err)
			}
			var rec struct {
				TCP bool `json:"tcp_established"`
			}
			if json.Unmarshal(raw, &rec); !rec.TCP {
				t.Fatalf("recipe %s: the dump did not keep the established connection", raw)
			}
			conv.send(t, "echo while-down") // retransmitted until the restore
			if tc.resume {
				m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: criuName, Restore: raw}}}
				for _, o := range r.Objects() {
					m.Workloads[0].Objects = append(m.Workloads[0].Objects, o.Name)
				}
				if err := r.Seal(ctx, m); err != nil {
					t.Fatal(err)
				}
				if err := b.Finish(ctx, w); err != nil {
					t.Fatalf("Finish: %v", err)
				}
				time.Sleep(time.Second) // the client's segments meet the lock
				m, err := r.Verify(ctx)
				if err != nil {
					t.Fatal(err)
				}
				src := hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "w"}
				if err := b.Restore(ctx, w, json.RawMessage(m.Workloads[0].Restore), src); err != nil {
					t.Fatalf("Restore: %v", err)
				}
			} else {
				if err := b.Thaw(ctx, w); err != nil {
					t.Fatalf("Thaw (rollback): %v", err)
				}
				if err := r.Discard(); err != nil {
					t.Fatal(err)
				}
			}
			conv.expect(t, "while-down")
			conv.send(t, "echo after")
			conv.expect(t, "after")
			if n := conformance.Advancing(t, p, frozenAt); n < frozenAt {
				t.Fatalf("counter restarted")
			}
			p.Intact(t)
		})
	}
}

const criuName = "criu"
