package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/hypervisors/qemu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// host is a set of real workloads (runc containers, QEMU VMs) and the
// ckpt binary with flags pointing at them.
type host struct {
	t                              *testing.T
	ckpt, runcRoot, qmpDir, region string
	journal, state, criuLogs       string
	lock                           string // its own ckpt lock (CKPT_LOCK), when it simulates a host of a fleet
	containers                     []*workloads.Container
	guests                         []*workloads.Guest
	domains                        []string                     // libvirt's, also in guests
	podmans                        []*workloads.PodmanContainer // a pod's members too
	managed                        []managed                    // Docker's, podman's and containerd's
}

// managed is a container run by a manager (Docker, podman, containerd):
// its counter is in its logs, and its manager's CLI checks it runs.
type managed interface {
	Label() string
	Ticks(testing.TB) int64
	Managed(testing.TB) error
}

func newHost(t *testing.T) *host {
	t.Helper()
	requireRoot(t)
	requireTool(t, "criu")
	requireTool(t, "runc")
	d := t.TempDir()
	qmp, err := os.MkdirTemp("", "ckq") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmp) })
	h := &host{t: t, ckpt: ckptBinary(t), runcRoot: filepath.Join(d, "runc"), qmpDir: qmp,
		region: filepath.Join(d, "region"), journal: filepath.Join(d, "journal.json"), state: filepath.Join(d, "resumed.json"),
		criuLogs: "/var/log/ckpt"}
	if out, err := h.run("region", "format", h.region); err != nil {
		t.Fatalf("region format: %v\n%s", err, out)
	}
	return h
}

func (h *host) container(env []string) *workloads.Container {
	c := workloads.StartContainer(h.t, h.runcRoot, env, 64)
	h.containers = append(h.containers, c)
	return c
}

// domain starts a libvirt domain (defined and started with virsh).
func (h *host) domain() *workloads.Guest {
	g := workloads.StartDomain(h.t, 256, 32, true)
	h.guests = append(h.guests, g)
	h.domains = append(h.domains, g.ID)
	return g
}

// docker runs a Docker container with more docker run options.
func (h *host) docker(runOpts ...string) *workloads.DockerContainer {
	c := workloads.StartDockerContainer(h.t, 64, runOpts...)
	h.managed = append(h.managed, c)
	return c
}

// podman runs a podman container (on the host's network) with more
// podman run options.
func (h *host) podman(runOpts ...string) *workloads.PodmanContainer {
	c := workloads.StartPodmanContainer(h.t, 64, runOpts...)
	h.podmans = append(h.podmans, c)
	h.managed = append(h.managed, c)
	return c
}

// pod creates a podman pod (with its own network namespace) running n
// containers, and returns its name.
func (h *host) pod(n int) string {
	pod, cs := workloads.StartPodmanPod(h.t, 32, n)
	h.podmans = append(h.podmans, cs...)
	for _, c := range cs {
		h.managed = append(h.managed, c)
	}
	return pod
}

// containerd runs a containerd container (ctr run, on the host's
// network).
func (h *host) containerd() *workloads.ContainerdContainer {
	c := workloads.StartContainerdContainer(h.t, 64)
	h.managed = append(h.managed, c)
	return c
}

func (h *host) vm() *workloads.Guest {
	g := workloads.StartGuest(h.t, requireTool(h.t, "qemu-system-x86_64"), h.qmpDir, 384)
	h.guests = append(h.guests, g)
	return g
}

// run runs ckpt with the engine flags for this host.
func (h *host) run(args ...string) (string, error) {
	h.t.Helper()
	out, err := h.command(args...).CombinedOutput()
	h.t.Logf("ckpt %s:\n%s", strings.Join(args[:1], " "), out)
	return string(out), err
}

// stdout runs ckpt as run does and returns its stdout alone (a --json
// document), logging its stderr: the log lines ckpt writes there (a plan
// warning about the host, say) are not part of the document.
func (h *host) stdout(args ...string) (string, error) {
	h.t.Helper()
	var stderr bytes.Buffer
	cmd := h.command(args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	h.t.Logf("ckpt %s:\n%s%s", strings.Join(args[:1], " "), stderr.Bytes(), out)
	return string(out), err
}

// command is ckpt with args, scoped to this test's region, runc root,
// QMP directory, libvirt domains, Docker and podman containers and pods,
// journal and resume
// state: the host's own workloads are never touched.
func (h *host) command(args ...string) *exec.Cmd {
	if len(args) > 0 && args[0] != "region" {
		args = append(args, "--region", h.region, "--runc-root", h.runcRoot, "--qmp-dir", h.qmpDir,
			"--libvirt-domain", workloads.DomainGlob(), "--docker-container", workloads.DockerGlob(),
			"--podman-container", workloads.PodmanGlob(), "--podman-pod", workloads.PodmanGlob(),
			"--containerd-container", workloads.ContainerdGlob(), "--journal", h.journal, "--resume-state", h.state)
	}
	cmd := exec.Command(h.ckpt, args...)
	if h.lock != "" {
		// A simulated host of its own (the fleet lock's tests).
		cmd.Env = append(os.Environ(), "CKPT_LOCK="+h.lock)
	}
	return cmd
}

// ticks is a container's counter: its stdout pipe before a suspend, its
// log file after a restore.
func (h *host) ticks(c *workloads.Container) int64 {
	n := c.Ticks.Load()
	if b, err := os.ReadFile(filepath.Join(h.criuLogs, c.ID+".log")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := workloads.ParseTick(l); ok && v > n {
				n = v
			}
		}
	}
	return n
}

// running checks every workload: counters move past since, memory sums,
// children, runc manages the containers, the VMs answer on QMP.
func (h *host) running(since map[string]int64) {
	t := h.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range h.containers {
		for h.ticks(c) <= since[c.ID] && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if h.ticks(c) <= since[c.ID] {
			t.Fatalf("container %s does not run (counter %d)", c.ID, h.ticks(c))
		}
		if s, err := c.Ask("sum"); err != nil || !strings.HasPrefix(s, "sum OK") {
			t.Fatalf("container %s memory: %q %v", c.ID, s, err)
		}
		if s, err := c.Ask("child"); err != nil || !strings.HasSuffix(s, "alive") {
			t.Fatalf("container %s child: %q %v", c.ID, s, err)
		}
		out, err := exec.Command("runc", "--root", h.runcRoot, "kill", c.ID, "CONT").CombinedOutput()
		if err != nil {
			t.Fatalf("runc kill %s: %v %s", c.ID, err, out)
		}
	}
	for i, c := range h.managed {
		key := fmt.Sprint("managed-", i)
		for c.Ticks(t) <= since[key] && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := c.Ticks(t); n <= since[key] {
			t.Fatalf("%s does not run (counter %d)", c.Label(), n)
		}
		if err := c.Managed(t); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range h.guests {
		for g.Ticks() <= since[g.ID] && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if g.Ticks() <= since[g.ID] {
			t.Fatalf("VM %s does not run (counter %d)", g.ID, g.Ticks())
		}
		if slices.Contains(h.domains, g.ID) {
			if st := workloads.DomainState(t, g.ID); st != "running" {
				t.Fatalf("libvirt domain %s: virsh domstate = %q, want running", g.ID, st)
			}
		}
		fi, _ := os.Stat(g.Console)
		from := fi.Size()
		for {
			b, _ := os.ReadFile(g.Console)
			fresh := string(b[from:])
			if strings.Contains(fresh, "sum BAD") {
				t.Fatalf("VM %s memory changed", g.ID)
			}
			if strings.Contains(fresh, "sum OK") {
				break
			}
			if time.Now().After(deadline.Add(30 * time.Second)) {
				t.Fatalf("VM %s printed no checksum since the check began (console %d → %d bytes, QEMU says %s); its console's end:\n%s", g.ID, from, len(b), vmStatus(g.Socket), workloads.TailLines(string(b), 15))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (h *host) counters() map[string]int64 {
	m := map[string]int64{}
	for _, c := range h.containers {
		m[c.ID] = h.ticks(c)
	}
	for _, g := range h.guests {
		m[g.ID] = g.Ticks()
	}
	for i, c := range h.managed {
		m[fmt.Sprint("managed-", i)] = c.Ticks(h.t)
	}
	return m
}

// TestSuspendAllResumeAll: ckpt suspend-all of two runc containers, a
// QEMU VM, a libvirt domain (autostart on), a Docker container (restart
// policy unless-stopped), a podman container (restart policy always), a
// podman pod of two containers and a containerd container (ctr run) into
// a directory region, then ckpt resume-all; everything runs on where it
// stopped, and libvirt, Docker, podman and containerd list theirs running
// with autostart and restart policy back.
func TestSuspendAllResumeAll(t *testing.T) {
	h := newHost(t)
	h.container(workloads.Checkpointable)
	h.container(workloads.Checkpointable)
	h.vm()
	dom := h.domain()
	dc := h.docker("--restart", "unless-stopped")
	pc := h.podman("--restart", "always")
	pod := h.pod(2)
	cd := h.containerd()
	out, err := h.run("plan", "--no-kexec")
	if err != nil || !strings.Contains(out, "8 workloads") || !strings.Contains(out, "containerd/"+cd.Workload()) || !strings.Contains(out, "libvirt/"+dom.ID) || !strings.Contains(out, "docker/"+dc.Name) ||
		!strings.Contains(out, "podman/"+pc.Name) || !strings.Contains(out, "podman/pod:"+pod) {
		t.Fatalf("plan: %v", err)
	}
	// podman's containers are the podman backend's alone, though they
	// sit in runc's default root.
	if strings.Contains(out, "criu/"+pc.Name) {
		t.Fatalf("plan lists podman's container %s as a bare runc container too", pc.Name)
	}
	before := h.counters()
	if out, err := h.run("suspend-all", "--no-kexec"); err != nil || !strings.Contains(out, "committed 8 workloads") {
		t.Fatalf("suspend-all: %v", err)
	}
	for _, c := range h.podmans {
		if st := c.Inspect(t, "{{.State.Status}}"); st != "exited" {
			t.Fatalf("podman container %s after suspend-all: %q, want exited (checkpointed)", c.Name, st)
		}
	}
	if st := cd.TaskStatus(t); st != "" {
		t.Fatalf("containerd task after suspend-all: %q, want none (checkpointed and deleted)", st)
	}
	if out, _ := exec.Command("runc", "--root", h.runcRoot, "list", "-q").Output(); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("containers still listed after suspend-all: %s", out)
	}
	if st := workloads.DomainState(t, dom.ID); st != "shut off" {
		t.Fatalf("libvirt domain after suspend-all: %q, want shut off (saved into the region)", st)
	}
	if info, _ := workloads.Virsh(t, "dominfo", dom.ID); !regexp.MustCompile(`Autostart:\s+disable`).MatchString(info) {
		t.Fatalf("libvirt domain's autostart while suspended:\n%s", info)
	}
	if st := dc.Inspect(t, "{{.State.Status}} {{.HostConfig.RestartPolicy.Name}}"); st != "exited no" {
		t.Fatalf("docker container after suspend-all: %q, want exited with restart policy no", st)
	}
	// The runc containers come back lazily (the others' backends have no
	// lazy restore, and are restored in full).
	out, err = h.stdout("resume-all", "--order", "vm", "--lazy=criu", "--json")
	if err != nil {
		t.Fatalf("resume-all: %v", err)
	}
	var res struct {
		Restored []struct {
			Key       string  `json:"key"`
			BlackoutS float64 `json:"blackout_s"`
			Seconds   float64 `json:"seconds"`
			PagesInS  float64 `json:"pages_in_s"`
		} `json:"restored"`
		Released bool  `json:"released"`
		Bytes    int64 `json:"bytes"`
	}
	if err := lastJSON(out, &res); err != nil || len(res.Restored) != 8 || !res.Released || res.Bytes <= 0 {
		t.Fatalf("resume-all result: %+v, %v", res, err)
	}
	for _, r := range res.Restored {
		// Each was frozen before the commit, restored after it.
		if r.BlackoutS <= 0 {
			t.Fatalf("resume-all result: %s has no blackout (%v s)", r.Key, r.BlackoutS)
		}
		if lazy := strings.HasPrefix(r.Key, "criu/"); lazy != (r.PagesInS > 0) || r.PagesInS > 0 && r.PagesInS < r.Seconds {
			t.Fatalf("resume-all --lazy=criu result: %s ran after %.2f s, its pages were in after %.2f s", r.Key, r.Seconds, r.PagesInS)
		}
		t.Logf("%s: running after %.2f s, pages in after %.2f s", r.Key, r.Seconds, r.PagesInS)
	}
	h.running(before)
	if info, _ := workloads.Virsh(t, "dominfo", dom.ID); !regexp.MustCompile(`Autostart:\s+enable`).MatchString(info) {
		t.Fatalf("libvirt domain's autostart after resume-all:\n%s", info)
	}
	if st := dc.Inspect(t, "{{.State.Status}} {{.HostConfig.RestartPolicy.Name}}"); st != "running unless-stopped" {
		t.Fatalf("docker container after resume-all: %q, want running with its restart policy back", st)
	}
	if st, _ := workloads.Podman(t, "pod", "inspect", "--format", "{{.State}}", pod); st != "Running" {
		t.Fatalf("podman pod %s after resume-all: %q, want Running", pod, st)
	}
	// Nothing is restored twice: the region is released, a second
	// resume-all finds nothing to do and touches nothing.
	if out, err := h.run("resume-all"); err == nil || !strings.Contains(out, "nothing was restored") {
		t.Fatalf("second resume-all = %v; want a refusal that restores nothing", err)
	}
	h.running(h.counters())
}

// lastJSON decodes the last of the JSON values in out: with --json,
// resume-all streams its progress events ({"event": …}, one per line)
// before its result.
func lastJSON(out string, v any) error {
	dec := json.NewDecoder(strings.NewReader(out))
	var last json.RawMessage
	for {
		var m json.RawMessage
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		last = m
	}
	if last == nil {
		return fmt.Errorf("no JSON in %q", out)
	}
	return json.Unmarshal(last, v)
}

// TestFailedDumpKeepsEverythingRunning: one container CRIU cannot dump
// (an MPTCP listener) fails suspend-all in the dump phase; every workload
// of every manager (a bare runc container, a QEMU VM, a libvirt domain,
// Docker's, podman's and containerd's containers) runs on, each managed
// by its manager, and nothing is committed.
func TestFailedDumpKeepsEverythingRunning(t *testing.T) {
	h := newHost(t)
	// Go's default MPTCP listener (cpu.max stays closed, so that the plan
	// passes and the dump itself fails).
	bad := h.container([]string{"GODEBUG=containermaxprocs=0"})
	h.container(workloads.Checkpointable)
	h.vm()
	h.domain()
	h.docker()
	h.podman()
	h.containerd()
	before := h.counters()
	out, err := h.run("suspend-all", "--no-kexec")
	if err == nil || !strings.Contains(out, "dump of criu/"+bad.ID) || !strings.Contains(out, "rolled back") {
		t.Fatalf("suspend-all = %v; want a dump failure of %s, rolled back", err, bad.ID)
	}
	h.running(before)
	if out, _ := h.run("region", "inspect", h.region); !strings.Contains(out, "no committed checkpoint") {
		t.Fatal("region committed after a failed suspend")
	}
}

// startSuspend runs ckpt suspend-all --no-kexec in the background and
// returns once the journal says every workload is frozen (the dump is
// under way), with the command and its output.
func (h *host) startSuspend(extra ...string) (*exec.Cmd, *bytes.Buffer) {
	h.t.Helper()
	cmd := h.command(append([]string{"suspend-all", "--no-kexec"}, extra...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if j, _ := checkpoint.ReadJournal(h.journal); j != nil && j.State == checkpoint.StateFrozen {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd, &out
}

// notCommitted checks the region holds no checkpoint.
func (h *host) notCommitted() {
	h.t.Helper()
	if out, _ := h.run("region", "inspect", h.region); !strings.Contains(out, "no committed checkpoint") {
		h.t.Fatal("region committed after a failed suspend")
	}
	// Nor any object left behind: a rollback drops what it wrote, and
	// recover what the killed suspend wrote.
	var left []string
	filepath.WalkDir(filepath.Join(h.region, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		h.t.Fatalf("objects left in the region after a failed suspend: %v", left)
	}
}

// TestKilledSuspendIsRecovered: kill -9 of ckpt mid-dump leaves workloads
// frozen; ckpt recover thaws them all.
func TestKilledSuspendIsRecovered(t *testing.T) {
	h := newHost(t)
	h.container(workloads.Checkpointable)
	h.vm()
	before := h.counters()
	cmd, _ := h.startSuspend()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	j, _ := checkpoint.ReadJournal(h.journal)
	if j == nil || j.State == checkpoint.StateCommitted {
		t.Skipf("skipped: the suspend finished before the kill (journal %+v); nothing to recover", j)
	}
	time.Sleep(time.Second) // the orphaned runc/CRIU finish their dumps
	out, err := h.run("recover")
	if err != nil || !strings.Contains(out, "running again") {
		t.Fatalf("recover: %v", err)
	}
	h.running(before)
}

// TestInterruptedSuspendRollsBack: Ctrl-C (SIGINT) during the dump rolls
// back: ckpt says so and exits non-zero, every workload runs on, nothing
// is committed, and the journal is gone.
func TestInterruptedSuspendRollsBack(t *testing.T) {
	h := newHost(t)
	h.container(workloads.Checkpointable)
	h.vm()
	before := h.counters()
	cmd, out := h.startSuspend("--log-level", "debug")
	cmd.Process.Signal(os.Interrupt)
	h.rolledBack(cmd, out, before, "the interrupt", "context canceled")
}

// rolledBack waits for a suspend-all that something disturbed (what) and
// checks it rolled back: it failed saying so and why (want), every
// workload runs on, nothing is committed and no journal is left.
func (h *host) rolledBack(cmd *exec.Cmd, out *bytes.Buffer, before map[string]int64, what, want string) {
	t := h.t
	t.Helper()
	err := cmd.Wait()
	t.Logf("ckpt suspend-all, disturbed by %s:\n%s", what, out)
	if err == nil {
		t.Skipf("skipped: the suspend committed before %s", what)
	}
	if !strings.Contains(out.String(), "rolled back") || !strings.Contains(strings.ToLower(out.String()), strings.ToLower(want)) {
		t.Fatalf("suspend-all = %v; want a rollback after %s (%q)", err, what, want)
	}
	h.running(before)
	h.notCommitted()
	if j, _ := checkpoint.ReadJournal(h.journal); j != nil {
		t.Fatalf("journal left after a rollback: %+v", j)
	}
}

// TestRegionFullKeepsEverythingRunning: the region (a small tmpfs) fills
// up mid-dump, after the plan found enough space: the dump fails with "no
// space", every workload runs on, and nothing is committed.
func TestRegionFullKeepsEverythingRunning(t *testing.T) {
	h := newHost(t)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=768m", "ckpt-test", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	h.region = filepath.Join(mnt, "region")
	if out, err := h.run("region", "format", h.region); err != nil {
		t.Fatalf("region format: %v\n%s", err, out)
	}
	h.container(workloads.Checkpointable)
	h.vm()
	before := h.counters()
	// Leave the region just the space the plan asks for (the workloads
	// plus 10 % and 64 MiB), so that the dump is still writing when
	// something else takes the rest.
	pj, err := h.stdout("plan", "--json", "--no-kexec")
	var plan struct {
		Bytes      int64 `json:"bytes"`
		RegionFree int64 `json:"region_free"`
	}
	if err == nil {
		err = json.Unmarshal([]byte(pj), &plan)
	}
	if err != nil {
		t.Fatalf("plan --json: %v", err)
	}
	f, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{1}, 1<<20)
	for n := plan.RegionFree - (plan.Bytes + plan.Bytes/10 + 64<<20) - 4<<20; n > 0; n -= int64(len(chunk)) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	cmd, out := h.startSuspend()
	// Something else takes the space the plan counted on: write until
	// the tmpfs is full.
	for err == nil {
		_, err = f.Write(chunk)
	}
	f.Close()
	// Whichever writer meets the full region first fails the dump: ckpt's
	// own region writer or CRIU ("No space left on device").
	h.rolledBack(cmd, out, before, "a full region", "no space")
}

// TestDemo runs the README's main command (the built binary, from the
// repository root): a sample container and VM are suspended and resumed.
func TestDemo(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command(ckptBinary(t), "demo", "--size", "64M")
	cmd.Dir = testenv.RepoRoot()
	out, err := cmd.CombinedOutput()
	t.Logf("ckpt demo:\n%s", out)
	if err != nil || !strings.Contains(string(out), "both continued where they stopped") {
		t.Fatalf("demo: %v", err)
	}
}

// TestBench: ckpt bench dry-runs a suspend of real workloads three times
// (ckpt, one at a time, backend defaults), then with --round-trip
// suspends and resumes them for real twice (ckpt, stock tools), measuring
// each one's blackout and restore rate; they run on where they stopped.
func TestBench(t *testing.T) {
	h := newHost(t)
	h.container(workloads.Checkpointable)
	h.container(workloads.Checkpointable)
	h.vm()
	before := h.counters()
	out, err := h.stdout("bench", "--round-trip", "--json")
	if err != nil {
		t.Fatalf("bench --round-trip: %v", err)
	}
	var rep struct {
		Memcpy []struct{ GBps float64 } `json:"memcpy"`
		Ours   struct {
			DumpGBps float64 `json:"dump_gbps"`
		} `json:"ours"`
		Defaults struct {
			DumpGBps float64 `json:"dump_gbps"`
		} `json:"defaults"`
		RoundTrips []struct {
			Label  string
			Resume struct {
				Released bool
				Failed   []any
			}
			PerWorkload []struct {
				Key         string
				Bytes       int64
				BlackoutS   float64 `json:"blackout_s"`
				DumpGBps    float64 `json:"dump_gbps"`
				RestoreGBps float64 `json:"restore_gbps"`
			} `json:"per_workload"`
		} `json:"round_trips"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v", err)
	}
	if len(rep.Memcpy) == 0 || rep.Ours.DumpGBps <= 0 || rep.Defaults.DumpGBps <= 0 {
		t.Fatalf("bench measured no dump or memcpy rate: %s", out)
	}
	if len(rep.RoundTrips) != 2 {
		t.Fatalf("bench --round-trip made %d round trips; want ckpt's and the stock tools'", len(rep.RoundTrips))
	}
	var table strings.Builder
	fmt.Fprintf(&table, "| run | workload | bytes | blackout | dump | restore |\n|---|---|---|---|---|---|\n")
	for _, rt := range rep.RoundTrips {
		for _, w := range rt.PerWorkload {
			fmt.Fprintf(&table, "| %s | %s | %d MiB | %.2f s | %.2f GB/s | %.2f GB/s |\n", rt.Label, w.Key, w.Bytes>>20, w.BlackoutS, w.DumpGBps, w.RestoreGBps)
		}
	}
	t.Logf("bench round trips:\n%s", table.String())
	for _, rt := range rep.RoundTrips {
		if !rt.Resume.Released || len(rt.Resume.Failed) > 0 || len(rt.PerWorkload) != 3 {
			t.Fatalf("%s: released %v, failed %v, %d workloads back; want all 3 and the region released", rt.Label, rt.Resume.Released, rt.Resume.Failed, len(rt.PerWorkload))
		}
		for _, w := range rt.PerWorkload {
			if w.Bytes <= 0 || w.BlackoutS <= 0 || w.DumpGBps <= 0 || w.RestoreGBps <= 0 {
				t.Errorf("%s: %s: bytes %d, blackout %.2fs, dump %.2f GB/s, restore %.2f GB/s; want each measured", rt.Label, w.Key, w.Bytes, w.BlackoutS, w.DumpGBps, w.RestoreGBps)
			}
		}
	}
	h.running(before)
}

// vmStatus asks QEMU behind socket for the VM's run state, for a failure
// message: a VM that QEMU runs but that prints nothing hangs in its guest.
func vmStatus(socket string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qemu.Dial(ctx, socket)
	if err != nil {
		return err.Error()
	}
	defer mon.Close()
	var st struct {
		Status string `json:"status"`
	}
	if err := mon.Execute(ctx, "query-status", nil, &st); err != nil {
		return err.Error()
	}
	// Where its vCPU is, twice: a guest that hangs spins or halts.
	var regs []string
	for range 2 {
		var out string
		if err := mon.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info registers"}, &out); err != nil {
			return st.Status + ", " + err.Error()
		}
		if f := strings.Fields(out); len(f) > 0 {
			i := slices.IndexFunc(f, func(s string) bool { return strings.HasPrefix(s, "RIP=") })
			j := slices.IndexFunc(f, func(s string) bool { return strings.HasPrefix(s, "HLT=") })
			if i >= 0 && j >= 0 {
				regs = append(regs, f[i]+" "+f[j])
			}
		}
		time.Sleep(time.Second)
	}
	return fmt.Sprintf("%s, vCPU %v", st.Status, regs)
}
