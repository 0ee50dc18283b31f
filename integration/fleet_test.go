package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/journal"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// fleetHost is a simulated host of a fleet: its own region, journal,
// resume state, ckpt lock and runc container, and its holder id.
type fleetHost struct {
	*host
	id string
	c  *workloads.Container
}

// TestFleetLockOneHostAtATime: simulated hosts on a real etcd, with 2
// reboot slots, run ckpt suspend-all --fleet-lock (what ckpt update runs
// on its kexec path, without the kexec this host cannot do):
//   - a third host waits, with its container running, while two hold the
//     slots, and suspends once the resume-all of one gives its slot back;
//   - the slot of a host that crashed (its region lost) stays taken, so
//     that another host waits, until that host's next boot (resume-all
//     --if-committed, with nothing to resume) gives it back;
//   - a suspend killed after taking its slot keeps it until ckpt recover
//     gives it back, and a suspend that rolls back gives it back itself.
//
// At no moment do more hosts than slots hold one.
func TestFleetLockOneHostAtATime(t *testing.T) {
	endpoint := workloads.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	group := fmt.Sprintf("ckpt-test-%d", os.Getpid())
	watch := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: group, ID: "observer"})
	holders := func() []string {
		t.Helper()
		slots, hs, err := watch.State(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, h := range hs {
			ids = append(ids, h.ID)
		}
		if len(ids) > slots {
			t.Fatalf("%d hosts hold a slot, of %d: %v", len(ids), slots, ids)
		}
		return ids
	}
	wantHolders := func(want ...string) {
		t.Helper()
		if got := holders(); !slices.Equal(got, want) {
			t.Fatalf("slot holders %v; want %v", got, want)
		}
	}
	newFleetHost := func(name string) *fleetHost {
		h := newHost(t)
		h.lock = filepath.Join(t.TempDir(), "ckpt.lock")
		return &fleetHost{host: h, id: name, c: h.container(workloads.Checkpointable)}
	}
	fleetArgs := func(fh *fleetHost) []string {
		return []string{"--fleet-lock", "etcd://" + endpoint, "--fleet-lock-group", group, "--fleet-lock-slots", "2",
			"--fleet-lock-id", fh.id, "--fleet-lock-poll", "200ms"}
	}
	suspend := func(fh *fleetHost) {
		t.Helper()
		if out, err := fh.run(append([]string{"suspend-all", "--no-kexec"}, fleetArgs(fh)...)...); err != nil || !strings.Contains(out, "committed 1 workloads") {
			t.Fatalf("suspend-all on %s: %v", fh.id, err)
		}
	}
	resume := func(fh *fleetHost) {
		t.Helper()
		before := fh.counters()
		out, err := fh.stdout("resume-all", "--json")
		var res struct {
			Released  bool `json:"released"`
			SlotGiven bool `json:"slot_given"`
		}
		if err != nil || lastJSON(out, &res) != nil || !res.Released || !res.SlotGiven {
			t.Fatalf("resume-all on %s: %v, %+v; want released, slot given back", fh.id, err, res)
		}
		fh.running(before)
	}
	// start runs a suspend-all in the background; wait gives its result.
	start := func(fh *fleetHost) (wait func() (string, error), done func() bool) {
		cmd := fh.command(append([]string{"suspend-all", "--no-kexec"}, fleetArgs(fh)...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var res error
		finished := false
		return func() (string, error) {
				if !finished {
					res, finished = <-exited, true
				}
				t.Logf("ckpt suspend-all on %s:\n%s", fh.id, out.String())
				return out.String(), res
			}, func() bool {
				if finished {
					return true
				}
				select {
				case res = <-exited:
					finished = true
				default:
				}
				return finished
			}
	}
	// waiting checks, for a few seconds, that fh's suspend waits for a
	// slot and its container runs on meanwhile.
	waiting := func(fh *fleetHost, done func() bool) {
		t.Helper()
		before := fh.counters()
		time.Sleep(3 * time.Second)
		if done() {
			t.Fatalf("suspend-all on %s did not wait for a slot", fh.id)
		}
		fh.running(before)
	}

	a, b, c := newFleetHost("host-a"), newFleetHost("host-b"), newFleetHost("host-c")
	suspend(a)
	suspend(b)
	wantHolders("host-a", "host-b")
	waitC, doneC := start(c)
	waiting(c, doneC)
	wantHolders("host-a", "host-b")
	resume(a)
	if out, err := waitC(); err != nil || !strings.Contains(out, "committed 1 workloads") {
		t.Fatalf("suspend-all on host-c after host-a's resume: %v", err)
	}
	wantHolders("host-b", "host-c")

	// host-b crashes: its checkpoint is lost with its region (a cold
	// boot). Its slot is kept meanwhile: host-a waits.
	if out, err := b.run("region", "format", "--force", b.region); err != nil {
		t.Fatalf("region format: %v\n%s", err, out)
	}
	waitA, doneA := start(a)
	waiting(a, doneA)
	wantHolders("host-b", "host-c")
	// host-b's next boot: nothing to resume, its slot is given back.
	if out, err := b.run("resume-all", "--if-committed"); err != nil || !strings.Contains(out, "nothing to resume") {
		t.Fatalf("resume-all --if-committed on host-b: %v", err)
	}
	if out, err := waitA(); err != nil || !strings.Contains(out, "committed 1 workloads") {
		t.Fatalf("suspend-all on host-a after host-b's boot: %v", err)
	}
	wantHolders("host-a", "host-c")
	resume(c)
	resume(a)
	wantHolders()

	// A suspend killed after it took its slot keeps it until ckpt
	// recover; one that rolls back gives it back.
	out, err := a.runEnv([]string{journal.FailpointEnv + "=freeze:one"}, append([]string{"suspend-all", "--no-kexec"}, fleetArgs(a)...)...)
	if !killed(err) {
		t.Fatalf("suspend-all with %s=freeze:one: %v (want SIGKILL)\n%s", journal.FailpointEnv, err, out)
	}
	wantHolders("host-a")
	before := a.counters()
	if out, err := a.run("recover"); err != nil {
		t.Fatalf("recover: %v\n%s", err, out)
	}
	a.running(before)
	wantHolders()
	bad := newFleetHost("host-d")
	bad.container([]string{"GODEBUG=containermaxprocs=0"}) // an MPTCP listener: its dump fails
	if out, err := bad.run(append([]string{"suspend-all", "--no-kexec"}, fleetArgs(bad)...)...); err == nil || !strings.Contains(out, "rolled back") {
		t.Fatalf("suspend-all on host-d = %v; want a failed dump, rolled back", err)
	}
	wantHolders()
	if out, err := exec.Command("runc", "--root", bad.runcRoot, "list", "-q").Output(); err != nil || len(strings.Fields(string(out))) != 2 {
		t.Fatalf("host-d's containers after the rollback: %q %v", out, err)
	}
}

// slotWatch polls a group's holders in a real etcd while an update runs.
type slotWatch struct {
	port string
	stop func() (held bool, now []string)
}

// watchSlot starts an etcd on the test host and watches whether id holds
// a slot of group at some moment.
func watchSlot(t *testing.T, group, id string) slotWatch {
	endpoint := workloads.StartEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	sem := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: group, ID: "observer"})
	quit, done := make(chan struct{}), make(chan bool)
	go func() {
		held := false
		for {
			if _, hs, err := sem.State(context.Background()); err == nil {
				held = held || slices.ContainsFunc(hs, func(h fleetlock.Holder) bool { return h.ID == id })
			}
			select {
			case <-quit:
				done <- held
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return slotWatch{port: endpoint[strings.LastIndex(endpoint, ":")+1:], stop: func() (bool, []string) {
		close(quit)
		held := <-done
		defer cli.Close()
		_, hs, err := sem.State(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, h := range hs {
			ids = append(ids, h.ID)
		}
		return held, ids
	}}
}
