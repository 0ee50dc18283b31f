package criu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

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
			conv := workloads.Converse(t, c.Addr)
			conv.Send(t, "echo before")
			conv.Expect(t, "before")
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
			conv.Send(t, "echo while-down") // retransmitted until the restore
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
			conv.Expect(t, "while-down")
			conv.Send(t, "echo after")
			conv.Expect(t, "after")
			if n := conformance.Advancing(t, p, frozenAt); n < frozenAt {
				t.Fatalf("counter restarted")
			}
			p.Intact(t)
		})
	}
}

const criuName = "criu"
