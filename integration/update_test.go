package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// Ports the guest's workloads listen on (forwarded to the test host).
const (
	e2eCtrPort  = 7001 // the runc container (the TCP client's connection)
	e2eTreePort = 7002 // the systemd service suspended as a process tree
)

// The operator's steps on the guest, as shell scripts in the share.
const e2eInstall = `set -eu
# The guest image runs CRIU without hardware breakpoints (TCG: see
# hack/guest-image.sh); what the agent runs inherits that.
[ "${CRIU_FAULT:-}" = 130 ] || { echo "CRIU_FAULT is not 130 in the guest" >&2; exit 1; }
# Install ckpt from its Debian package; it enables the boot units.
dpkg -i /mnt/host/ckpt_*.deb
systemctl is-enabled ckpt-resume-early.service ckpt-resume.service
sed -i 's|^#CKPT_REGION=.*|CKPT_REGION=/dev/pmem0|' /etc/default/ckpt
ckpt region format /dev/pmem0 # the fs layout (DAX): the default on a pmem device
`

const e2eStart = `set -eu
D=/var/lib/ckpt-e2e
mkdir -p $D /etc/ckpt/ckpt.toml.d /run/ckpt/qmp
rm -rf $D/bundle && cp -a /mnt/host/bundle $D/
install -m 755 /mnt/host/testload /usr/local/bin/ckpt-e2e-testload
install -m 644 /mnt/host/vmcounter.elf $D/vmcounter.elf
cat >/etc/systemd/system/ckpt-e2e-tree.service <<'EOF'
[Unit]
Description=ckpt e2e: a service that ckpt suspends as a process tree
[Service]
Environment=GODEBUG=multipathtcp=0,containermaxprocs=0
ExecStart=/usr/local/bin/ckpt-e2e-testload -mem 32 -tick 1s -listen 0.0.0.0:7002
StandardOutput=append:/var/log/ckpt-e2e-tree.log
StandardError=inherit
[Install]
WantedBy=multi-user.target
EOF
cat >/etc/ckpt/ckpt.toml.d/50-e2e.toml <<'EOF'
[backends.criu]
process_trees = ["/system.slice/ckpt-e2e-tree.service"]
EOF
systemctl daemon-reload
systemctl enable --now ckpt-e2e-tree.service
# The container's stdio is a pipe whose reader (cat) outlives runc, as a
# shim's would.
systemd-run --unit=ckpt-e2e-ctr-log --collect sh -c \
  'runc run -d --bundle /var/lib/ckpt-e2e/bundle e2e-ctr </dev/null 2>&1 | cat >>/var/log/ckpt-e2e-ctr.log'
# A tiny VM that counts on its serial port, with its QMP socket where ckpt
# looks for VMs.
systemd-run --unit=ckpt-e2e-vm --collect qemu-system-x86_64 -machine pc -accel tcg -m 16 -display none -nic none \
  -monitor none -kernel $D/vmcounter.elf \
  -chardev file,id=ser,path=/var/log/ckpt-e2e-vm.serial,append=on -serial chardev:ser \
  -qmp unix:/run/ckpt/qmp/e2e-vm.qmp,server=on,wait=off
for i in $(seq 100); do [ -S /run/ckpt/qmp/e2e-vm.qmp ] && runc list | grep -q 'e2e-ctr .*running' && exit 0; sleep 0.2; done
echo "workloads did not start" >&2; runc list >&2; exit 1
`

// stageE2E puts what the guest needs into its share: the ckpt package,
// the container's bundle, testload, and the VM's counting program.
func stageE2E(t *testing.T, g *sysGuest) {
	t.Helper()
	out, err := exec.Command(filepath.Join(testenv.RepoRoot(), "hack", "build-deb.sh"), g.Share).CombinedOutput()
	if err != nil {
		t.Fatalf("hack/build-deb.sh: %v\n%s", err, out)
	}
	bundle := workloads.Bundle(t, workloads.Checkpointable, "/bin/testload", "-mem", "256", "-listen", fmt.Sprintf("0.0.0.0:%d", e2eCtrPort))
	if out, err := exec.Command("cp", "-a", bundle, filepath.Join(g.Share, "bundle")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	tl, _ := os.ReadFile(testenv.StaticBinary(t, "./internal/testload"))
	os.WriteFile(filepath.Join(g.Share, "testload"), tl, 0o755)
	as, ld := requireTool(t, "as"), requireTool(t, "ld")
	obj := filepath.Join(t.TempDir(), "vmcounter.o")
	for _, c := range [][]string{
		{as, "--32", "-o", obj, filepath.Join("testdata", "vmcounter.S")},
		{ld, "-m", "elf_i386", "-Ttext", "0x100000", "-o", filepath.Join(g.Share, "vmcounter.elf"), obj},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", c[0], err, out)
		}
	}
	for name, body := range map[string]string{"e2e-install.sh": e2eInstall, "e2e-start.sh": e2eStart} {
		if err := os.WriteFile(filepath.Join(g.Share, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// lineClient keeps one TCP connection to testload and asks it "tick"
// every half second, as a client of the service would keep talking. It
// records every answer's time, and the first error (a reset, an EOF).
type lineClient struct {
	mu   sync.Mutex // one request at a time
	conn net.Conn
	rd   *bufio.Reader

	smu     sync.Mutex
	answers []tickAt
	err     error
	stop    chan struct{}
	done    chan struct{}
}

type tickAt struct {
	at   time.Time
	tick int64
}

func dialLineClient(t *testing.T, addr string, timeout time.Duration) *lineClient {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			lc := &lineClient{conn: c, rd: bufio.NewReader(c), stop: make(chan struct{}), done: make(chan struct{})}
			if _, err := lc.Ask("tick"); err == nil {
				go lc.loop()
				t.Cleanup(lc.Close)
				return lc
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer on %s within %s: %v", addr, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// Ask sends one line and reads the answer (waiting out a blackout).
func (c *lineClient) Ask(cmd string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.SetDeadline(time.Now().Add(15 * time.Minute))
	if _, err := fmt.Fprintf(c.conn, "%s\n", cmd); err != nil {
		return "", err
	}
	l, err := c.rd.ReadString('\n')
	return strings.TrimSpace(l), err
}

func (c *lineClient) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
		a, err := c.Ask("tick")
		c.smu.Lock()
		if err != nil {
			c.err = err
			c.smu.Unlock()
			return
		}
		if n, ok := workloads.ParseTick(a); ok {
			c.answers = append(c.answers, tickAt{time.Now(), n})
		}
		c.smu.Unlock()
	}
}

// Err is the connection's first error, if any.
func (c *lineClient) Err() error { c.smu.Lock(); defer c.smu.Unlock(); return c.err }

// Last is the last answer before t (or the last of all, for a zero t).
func (c *lineClient) Last() tickAt {
	c.smu.Lock()
	defer c.smu.Unlock()
	if len(c.answers) == 0 {
		return tickAt{}
	}
	return c.answers[len(c.answers)-1]
}

// Gap is the longest pause between two answers after since: the blackout
// as the client saw it, and the answers on either side of it.
func (c *lineClient) Gap(since time.Time) (time.Duration, tickAt, tickAt) {
	c.smu.Lock()
	defer c.smu.Unlock()
	var best time.Duration
	var before, after tickAt
	for i := 1; i < len(c.answers); i++ {
		if c.answers[i].at.Before(since) {
			continue
		}
		if d := c.answers[i].at.Sub(c.answers[i-1].at); d > best {
			best, before, after = d, c.answers[i-1], c.answers[i]
		}
	}
	return best, before, after
}

func (c *lineClient) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.conn.Close()
	<-c.done
}

// askOnce opens a connection, asks one line and closes it.
func askOnce(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
		return "", err
	}
	l, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(l), err
}

// e2eState is what the checks compare across an update.
type e2eState struct {
	boot, kernel string
	ctrTick      int64
	treeTick     int64
	treePid      string
	vmCount      int64
}

func (s *e2eSuite) state() e2eState {
	t, g := s.t, s.g
	t.Helper()
	out := g.MustSh(3*time.Minute, `cat /proc/sys/kernel/random/boot_id; uname -r; systemctl show -p MainPID --value ckpt-e2e-tree.service; cat /var/log/ckpt-e2e-vm.serial`)
	lines := strings.SplitN(out, "\n", 4)
	st := e2eState{boot: lines[0], kernel: lines[1], treePid: lines[2], ctrTick: s.client.Last().tick}
	st.vmCount, _ = lastInt(lines[3], "vm-count ")
	if a, err := askOnce(s.treeAddr, "tick"); err == nil {
		st.treeTick, _ = workloads.ParseTick(a)
	}
	return st
}

type e2eSuite struct {
	t        *testing.T
	g        *sysGuest
	client   *lineClient
	treeAddr string
	table    []string
	lazy     bool // the container comes back lazily ([restore] lazy)
}

// lazyAtBoot makes the boot units restore the runc container lazily (the
// service, a process tree, is restored in full).
func (s *e2eSuite) lazyAtBoot() {
	s.g.MustSh(time.Minute, `printf '[restore]\nlazy = ["criu"]\n' >/etc/ckpt/ckpt.toml.d/60-e2e-lazy.toml`)
	s.lazy = true
}

// TestKernelUpdate is the product's promise, end to end, on a real Debian
// 12 host with systemd in a QEMU guest: a runc container (256 MiB of
// checksummed memory, a counter, a child, and an established connection
// to a client on the test host that keeps talking), a systemd service
// suspended as a process tree, and a VM, all suspended by ckpt
// suspend-all into /dev/pmem0, a real kexec into bookworm-backports' 6.12,
// and resumed by ckpt-resume.service in the new boot. Then, on the same
// workloads: a second update into the same kernel, as next month's would
// be; an update back to 6.1 with one workload's object damaged before the
// resume, repaired and retried; the fallback where kexec is disabled (a
// disk region and a full reboot); and, for comparison, a cold update.
func TestKernelUpdate(t *testing.T) {
	t.Parallel()
	_, v := guestImage(t)
	g := bootSysGuest(t, v.K61, e2eCtrPort, e2eTreePort)
	s := startE2E(t, g, "sh -x /mnt/host/e2e-install.sh")
	s.update(v.K612, "6.1 → 6.12")
	// Next month's update goes into the fs layout (DAX) on the same
	// device: first both layouts measured on these workloads.
	s.layouts()
	s.updateVerb(v.K612, "6.12 → 6.12 by ckpt update (a restart asked for), fs layout (DAX)")
	s.inPlace()
	s.g.MustSh(time.Minute, "ckpt region format /dev/pmem0 --kind raw")
	s.partial(v.K61)
	s.fallback(v.K61)

	// runc still manages the container: kill ends it.
	g.MustSh(time.Minute, "runc kill e2e-ctr KILL; for i in $(seq 50); do runc list | grep -q 'e2e-ctr .*stopped' && exit 0; sleep 0.2; done; runc list; exit 1")
	s.cold()
	t.Logf("a kernel update with ckpt vs a plain reboot (TCG guest):\n"+
		"| update | container's blackout, seen by its client | freeze → committed and ended | → kexec, boot, resume-all starts | restore | container freeze → restored | service | VM |\n"+
		"|---|---|---|---|---|---|---|---|\n%s", strings.Join(s.table, "\n"))
}

// startE2E installs ckpt in the guest with the install script, starts
// the workloads, and connects the container's client on the test host.
func startE2E(t *testing.T, g *sysGuest, install string) *e2eSuite {
	t.Helper()
	stageE2E(t, g)
	g.MustSh(5*time.Minute, install)
	g.MustSh(5*time.Minute, "sh /mnt/host/e2e-start.sh")
	s := &e2eSuite{t: t, g: g, treeAddr: fmt.Sprintf("127.0.0.1:%d", g.Fwd[e2eTreePort])}
	// Filling 256 MiB under TCG takes a while.
	s.client = dialLineClient(t, fmt.Sprintf("127.0.0.1:%d", g.Fwd[e2eCtrPort]), 5*time.Minute)
	if a, err := s.client.Ask("sum"); err != nil || !strings.HasPrefix(a, "sum OK") {
		t.Fatalf("container before the update: %q, %v", a, err)
	}
	return s
}

// update runs one kernel update into kernel and checks every workload.
func (s *e2eSuite) update(kernel, name string) {
	s.t.Helper()
	s.t.Logf("== update %s", name)
	plan := s.g.MustSh(5*time.Minute, "ckpt plan --region /dev/pmem0 --kernel "+kernel)
	s.t.Logf("ckpt plan:\n%s", plan)
	for _, w := range []string{"criu/e2e-ctr", "criu/cgroup:/system.slice/ckpt-e2e-tree.service", "qemu/"} {
		if !strings.Contains(plan, w) {
			s.t.Fatalf("plan does not list %s", w)
		}
	}
	r := s.suspend("ckpt suspend-all --region /dev/pmem0 --kernel " + kernel)
	s.awaitResume(r, true)
	s.check(r, kernel, "/dev/pmem0", name)
}

// updateVerb is an update as an update tool runs it, with ckpt update:
// nothing is due, then a library upgrade asks for a restart
// (/run/reboot-required) while the bootloader's kernel already runs. The
// precheck names the userspace path; Debian 12's systemd 252 has no
// soft-reboot, so ckpt update kexecs into the same kernel, and every
// workload is checked as after any update.
func (s *e2eSuite) updateVerb(kernel, name string) {
	s.t.Helper()
	s.t.Logf("== update %s", name)
	if res := s.g.Sh(time.Minute, "ckpt update --check"); res.Exit != 4 {
		s.t.Fatalf("ckpt update --check with nothing pending: exit %d (want 4, no update due)\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
	s.g.MustSh(time.Minute, "echo '*** System restart required ***' >/run/reboot-required && echo libc6 >/run/reboot-required.pkgs")
	out := s.g.MustSh(time.Minute, "ckpt update --check --json")
	var pc struct {
		Path       string `json:"path"`
		Reason     string `json:"reason"`
		SoftReboot bool   `json:"soft_reboot"`
		Facts      struct {
			Systemd int `json:"systemd_version"`
		} `json:"facts"`
	}
	if err := json.Unmarshal([]byte(out), &pc); err != nil || pc.Path != "userspace" || pc.SoftReboot || pc.Facts.Systemd < 252 {
		s.t.Fatalf("ckpt update --check --json = %+v, %v; want the userspace path by kexec (no soft-reboot in systemd %d)\n%s", pc, err, pc.Facts.Systemd, out)
	}
	s.t.Logf("precheck: %s: %s", pc.Path, pc.Reason)
	// With a reboot slot from a real etcd on the test host (the guest
	// reaches it through QEMU's 10.0.2.2): held through the kexec, given
	// back by ckpt-resume.service once every workload is back.
	slot := watchSlot(s.t, "e2e", "e2e-guest")
	r := s.suspend("ckpt update --region /dev/pmem0 --fleet-lock etcd://10.0.2.2:" + slot.port +
		" --fleet-lock-group e2e --fleet-lock-id e2e-guest --fleet-lock-slots 1")
	s.awaitResume(r, true)
	s.check(r, kernel, "/dev/pmem0", name)
	if held, now := slot.stop(); !held || len(now) > 0 || !strings.Contains(r.log, "gave back the fleet lock's reboot slot") {
		s.t.Fatalf("the guest's reboot slot: seen held %v, holders after the resume %v; want held during the update, given back at boot", held, now)
	}
	if res := s.g.Sh(time.Minute, "ckpt update --check"); res.Exit != 4 {
		s.t.Fatalf("ckpt update --check after the update: exit %d (want 4)\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
}

// layouts runs ckpt bench on the guest's workloads into the raw layout and
// into the fs layout (DAX) on the same /dev/pmem0, each with memcpy into
// that region in the same run, and leaves the fs layout formatted. The
// raw layout stages CRIU's files in RAM and copies them in; the fs
// layout's files are the device's memory.
func (s *e2eSuite) layouts() {
	s.t.Helper()
	rows := []string{"| layout | workloads | ckpt dump | one at a time | backend defaults | memcpy into the region | ckpt / memcpy | peak extra RAM (ckpt) |", "|---|---|---|---|---|---|---|---|"}
	for _, kind := range []string{"raw", "fs"} {
		s.g.MustSh(time.Minute, "ckpt region format /dev/pmem0 --kind "+kind)
		out := s.g.MustSh(10*time.Minute, "ckpt bench --region /dev/pmem0 --json")
		type result struct {
			GBps float64 `json:"dump_gbps"`
			Peak int64   `json:"peak_extra_ram"`
		}
		var rep struct {
			Bytes       int64   `json:"bytes"`
			Ours        result  `json:"ours"`
			Seq         result  `json:"sequential"`
			Defaults    result  `json:"defaults"`
			RegionWrite float64 `json:"region_write_gbps"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			s.t.Fatalf("ckpt bench --json: %v\n%s", err, out)
		}
		if rep.Bytes <= 0 || rep.Ours.GBps <= 0 || rep.RegionWrite <= 0 {
			s.t.Fatalf("ckpt bench on the %s layout measured nothing:\n%s", kind, out)
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %.3f GB/s | %.3f GB/s | %.3f GB/s | %.3f GB/s | %.0f %% | %.0f MiB (%.0f %%) |", kind,
			mib(rep.Bytes), rep.Ours.GBps, rep.Seq.GBps, rep.Defaults.GBps, rep.RegionWrite, 100*rep.Ours.GBps/rep.RegionWrite,
			float64(rep.Ours.Peak)/(1<<20), 100*float64(rep.Ours.Peak)/float64(rep.Bytes)))
	}
	s.t.Logf("ckpt bench in the guest (TCG), the same workloads into each layout of /dev/pmem0:\n%s", strings.Join(rows, "\n"))
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

var rePeak = regexp.MustCompile(`peak extra RAM \S+ \S+ \(([0-9.]+) % of the bytes\)`)

// inPlace checks the last update's suspend on the fs layout: the region
// was mounted with DAX and the dump took almost no RAM beyond it (the
// issue's bound: 5 % of the bytes dumped).
func (s *e2eSuite) inPlace() {
	s.t.Helper()
	if mnt := s.g.MustSh(time.Minute, "findmnt -n -o OPTIONS /run/ckpt/fs/pmem0"); !strings.Contains(mnt, "dax") {
		s.t.Fatalf("the fs region is not mounted with DAX: %s", mnt)
	}
	log := s.g.MustSh(time.Minute, "cat /var/log/ckpt-e2e-suspend.log")
	m := rePeak.FindStringSubmatch(log)
	if m == nil {
		s.t.Fatalf("suspend's output gives no peak extra RAM:\n%s", log)
	}
	if pct, _ := strconv.ParseFloat(m[1], 64); pct > 5 {
		s.t.Fatalf("the suspend into the fs layout took %s %% of the bytes in extra RAM (want ≤ 5 %%): %s", m[1], m[0])
	}
	s.t.Logf("suspend into the fs layout: %s", m[0])
}

// run is one update under way: the state before, and when it started.
type run struct {
	before e2eState
	start  time.Time
	up     time.Duration // until the new boot's agent answered
	done   time.Duration // until resume at boot had ended
	log    string        // suspend-all's output and the boot units' journal
	// sameBoot: the update restarts userspace alone (soft-reboot), so the
	// kernel's boot id stays.
	sameBoot bool
}

// suspend records the workloads' state and starts cmd (which ends the
// boot), then waits for the new boot.
func (s *e2eSuite) suspend(cmd string) *run {
	s.t.Helper()
	r := &run{before: s.state(), start: time.Now()}
	s.g.Start("(" + cmd + ") >/var/log/ckpt-e2e-suspend.log 2>&1; echo exit $? >>/var/log/ckpt-e2e-suspend.log")
	// A failed command ends the log with "exit N", N > 0 (one that kexecs
	// may write "exit 0" while systemd shuts down).
	s.g.WaitBootUnless(r.before.boot, 10*time.Minute, "grep -q '^exit [1-9]' /var/log/ckpt-e2e-suspend.log && cat /var/log/ckpt-e2e-suspend.log")
	r.up = time.Since(r.start)
	return r
}

// awaitResume waits for the boot units to end; resume says whether
// ckpt-resume.service must have succeeded (else only the early unit).
func (s *e2eSuite) awaitResume(r *run, resume bool) {
	s.t.Helper()
	units := "ckpt-resume-early.service"
	if resume {
		units += " ckpt-resume.service"
	}
	var st string
	for deadline := time.Now().Add(10 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := s.g.agent.exec(ctx, "systemctl show -p ActiveState,SubState,Result "+units)
		cancel()
		if err != nil {
			continue // a busy guest's agent; ask again
		}
		st = res.Stdout
		if strings.Contains(st, "ActiveState=failed") || strings.Count(st, "SubState=exited") == len(strings.Fields(units)) {
			break
		}
	}
	r.done = time.Since(r.start)
	r.log = s.g.Sh(time.Minute, "cat /var/log/ckpt-e2e-suspend.log; journalctl -b -o cat -u ckpt-resume-early.service -u ckpt-resume.service").Stdout
	s.t.Logf("suspend and resume:\n%s", r.log)
	if strings.Contains(st, "ActiveState=failed") || strings.Count(st, "Result=success") != len(strings.Fields(units)) {
		s.t.Fatalf("resume at boot: %s", st)
	}
}

// check checks every workload after an update into kernel and records
// the blackout in the table.
func (s *e2eSuite) check(r *run, kernel, region, name string) {
	t, g, before := s.t, s.g, r.before
	t.Helper()
	after := s.state()
	// The new kernel, a new boot.
	if after.kernel != kernel || (after.boot == before.boot) != r.sameBoot {
		t.Fatalf("after the update: kernel %s (want %s), boot %s (before %s; the same boot: %v)", after.kernel, kernel, after.boot, before.boot, r.sameBoot)
	}
	// The container: the same connection answers, its counter went on,
	// its memory and its child are intact, runc manages it.
	if err := s.client.Err(); err != nil {
		t.Fatalf("the client's connection broke: %v", err)
	}
	for cmd, want := range map[string]string{"sum": "sum OK", "child": "alive"} {
		if a, err := s.client.Ask(cmd); err != nil || !strings.Contains(a, want) {
			t.Fatalf("container after the update: %s → %q, %v", cmd, a, err)
		}
	}
	gap, last, first := s.client.Gap(r.start)
	if first.tick < last.tick || last.tick < before.ctrTick {
		t.Fatalf("container counter: %d before the blackout, %d after (a restart starts again near 0)", last.tick, first.tick)
	}
	g.MustSh(time.Minute, "runc list | grep 'e2e-ctr .*running'")
	// The service: systemd knows the restored tree as the running service.
	if a, err := askOnce(s.treeAddr, "sum"); err != nil || !strings.HasPrefix(a, "sum OK") {
		t.Fatalf("service after the update: sum → %q, %v", a, err)
	}
	if a, err := askOnce(s.treeAddr, "child"); err != nil || !strings.Contains(a, "alive") {
		t.Fatalf("service after the update: child → %q, %v", a, err)
	}
	if after.treeTick < before.treeTick || after.treePid != before.treePid {
		t.Fatalf("service: tick %d → %d, MainPID %s → %s", before.treeTick, after.treeTick, before.treePid, after.treePid)
	}
	g.MustSh(time.Minute, "systemctl is-active ckpt-e2e-tree.service")
	// The VM: its counter goes on, one step at a time, never from 1 again.
	serial := g.MustSh(time.Minute, "cat /var/log/ckpt-e2e-vm.serial")
	if err := countsOnByOne(serial, "vm-count "); err != nil || after.vmCount <= before.vmCount {
		t.Fatalf("VM counter: %v (%d before, %d after)", err, before.vmCount, after.vmCount)
	}
	// The region is released, the network lock is gone.
	if st := g.MustSh(time.Minute, "ckpt status --region "+region+" --json"); !strings.Contains(st, `"committed": false`) {
		t.Fatalf("region not released:\n%s", st)
	}
	if n := strings.TrimSpace(g.Sh(time.Minute, "iptables -S | grep -ci 0xc114").Stdout); n != "0" {
		t.Fatalf("%s network lock rules left:\n%s", n, g.Sh(time.Minute, "iptables -S").Stdout)
	}

	// What the blackout was made of, from ckpt's own events (the guest's
	// clock, which both boots take from the same RTC).
	ev := parseEvents(r.log)
	freeze, done, verify := ev.first("freeze", ""), ev.first("done", ""), ev.first("verify", "")
	end := ev.last("restore", "")
	row := fmt.Sprintf("| %s | %.1f s | %.1f s | %.1f s | %.1f s |", name, gap.Seconds(),
		done.Sub(freeze).Seconds(), verify.Sub(done).Seconds(), end.Sub(verify).Seconds())
	// Restored lazily ([restore] lazy), the container runs before its
	// pages are in, and its blackout ends then.
	running, pagesIn := ev.last("running", "criu/e2e-ctr"), ev.last("restore", "criu/e2e-ctr")
	if s.lazy {
		if running.IsZero() || pagesIn.Before(running) {
			t.Fatalf("the container was not restored lazily: running at %v, pages in at %v", running, pagesIn)
		}
		t.Logf("update %s: the container ran %.2f s before its last page was in", name, pagesIn.Sub(running).Seconds())
	}
	var per []string
	for _, k := range []string{"criu/e2e-ctr", treeKey, "qemu/e2e-vm"} {
		end := ev.last("restore", k)
		if k == "criu/e2e-ctr" && s.lazy {
			end = running
		}
		per = append(per, fmt.Sprintf("%.1f s", end.Sub(ev.first("freeze", k)).Seconds()))
	}
	s.table = append(s.table, row+" "+strings.Join(per, " | ")+" |")
	t.Logf("update %s: client blackout %.1fs (tick %d → %d); freeze → commit and end %.1fs; → resume-all starts %.1fs; restore %.1fs; per workload (container, service, VM) freeze → restored: %s",
		name, gap.Seconds(), last.tick, first.tick, done.Sub(freeze).Seconds(), verify.Sub(done).Seconds(), end.Sub(verify).Seconds(), strings.Join(per, ", "))
}

// ckptEvents are the times of ckpt's progress events in a log.
type ckptEvents []struct {
	at              time.Time
	phase, workload string
}

var reEvent = regexp.MustCompile(`time=(\S+) level=\S+ msg=progress phase=(\S+)(?: workload=(\S+))?`)

func parseEvents(log string) ckptEvents {
	var ev ckptEvents
	for _, m := range reEvent.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		ev = append(ev, struct {
			at              time.Time
			phase, workload string
		}{at, m[2], m[3]})
	}
	return ev
}

// first and last return the time of a phase's first or last event, for
// one workload or ("") any.
func (ev ckptEvents) first(phase, workload string) time.Time {
	for _, e := range ev {
		if e.phase == phase && (workload == "" || e.workload == workload) {
			return e.at
		}
	}
	return time.Time{}
}

func (ev ckptEvents) last(phase, workload string) time.Time {
	for i := len(ev) - 1; i >= 0; i-- {
		if e := ev[i]; e.phase == phase && (workload == "" || e.workload == workload) {
			return e.at
		}
	}
	return time.Time{}
}

// treeKey is the service's workload key.
const treeKey = "criu/cgroup:/system.slice/ckpt-e2e-tree.service"

// partial: an update back to 6.1 whose resume at boot is held back
// (systemd.mask= on the next command line), so that one workload's object
// can be damaged first. resume-all brings the others back and keeps the
// damaged one's images; ckpt status says which and why; once the object
// is repaired from a copy, ckpt resume brings it back too.
func (s *e2eSuite) partial(kernel string) {
	t, g := s.t, s.g
	t.Helper()
	name := "6.12 → 6.1, an object damaged, repaired, resumed"
	t.Logf("== update %s", name)
	r := s.suspend("ckpt suspend-all --region /dev/pmem0 --kernel " + kernel + " --cmdline-set systemd.mask=ckpt-resume.service")
	s.awaitResume(r, false)
	off := strings.TrimSpace(g.MustSh(time.Minute, `set -eu
set -- $(ckpt region inspect /dev/pmem0 | grep 'ckpt-e2e-tree.service/images/pages-' | sort -k2 -n | tail -1)
off=$(( $4 + 8192 ))
dd if=/dev/pmem0 of=/var/tmp/ckpt-e2e-object.bak bs=16 count=1 iflag=skip_bytes skip=$off status=none
head -c 16 /dev/zero | tr '\0' '\245' | dd of=/dev/pmem0 bs=16 count=1 oflag=seek_bytes seek=$off conv=notrunc status=none
sync; echo $off`))
	res := g.Sh(10*time.Minute, "ckpt resume-all --region /dev/pmem0 --order=vm")
	r.log += res.Stdout + res.Stderr
	t.Logf("resume-all with a damaged object (exit %d):\n%s%s", res.Exit, res.Stdout, tail(res.Stderr, 10))
	if res.Exit != 3 || !strings.Contains(res.Stdout, "FAILED "+treeKey) || !strings.Contains(res.Stdout, "resumed 2, failed 1") {
		t.Fatalf("resume-all with %s damaged: exit %d, want 3 naming it", treeKey, res.Exit)
	}
	st := g.MustSh(time.Minute, "ckpt status --region /dev/pmem0 --json")
	if !strings.Contains(st, `"committed": true`) || !strings.Contains(st, treeKey+`": "object `) || !strings.Contains(st, "checksum") {
		t.Fatalf("ckpt status does not say which workload failed and why:\n%s", st)
	}
	g.MustSh(time.Minute, "systemctl is-active ckpt-e2e-tree.service && exit 1; runc list | grep 'e2e-ctr .*running'")
	// Repaired from the copy, the workload comes back with ckpt resume.
	g.MustSh(time.Minute, "dd if=/var/tmp/ckpt-e2e-object.bak of=/dev/pmem0 bs=16 count=1 oflag=seek_bytes seek="+off+" conv=notrunc status=none; sync")
	res = g.Sh(10*time.Minute, "ckpt resume --region /dev/pmem0 "+treeKey)
	t.Logf("ckpt resume after the repair (exit %d):\n%s%s", res.Exit, res.Stdout, tail(res.Stderr, 10))
	if res.Exit != 0 {
		t.Fatalf("ckpt resume %s after the repair: exit %d", treeKey, res.Exit)
	}
	r.log += res.Stdout + res.Stderr
	s.check(r, kernel, "/dev/pmem0", name)
}

// fallback: where kexec is disabled, plan names the fallback, and
// following it (a region on disk, suspend-all --no-kexec, a reboot
// through the firmware) brings every workload back at boot.
func (s *e2eSuite) fallback(kernel string) {
	t, g := s.t, s.g
	t.Helper()
	name := "kexec disabled: disk region, full reboot"
	t.Logf("== update %s", name)
	g.MustSh(time.Minute, "sysctl -q -w kernel.kexec_load_disabled=1")
	res := g.Sh(5*time.Minute, "ckpt plan --region /dev/pmem0")
	t.Logf("ckpt plan with kexec disabled (exit %d):\n%s%s", res.Exit, res.Stdout, res.Stderr)
	if res.Exit == 0 || !strings.Contains(res.Stdout+res.Stderr, "fall back to a full reboot") {
		t.Fatalf("plan with kexec disabled: exit %d, no fallback named", res.Exit)
	}
	const region = "/var/lib/ckpt/region"
	g.MustSh(time.Minute, "ckpt region format "+region+" --kind dir && sed -i 's|^CKPT_REGION=.*|CKPT_REGION="+region+"|' /etc/default/ckpt")
	r := s.suspend("ckpt suspend-all --no-kexec --region " + region + " && systemctl reboot")
	s.awaitResume(r, true)
	s.check(r, kernel, region, name)
	g.MustSh(time.Minute, "sed -i 's|^CKPT_REGION=.*|CKPT_REGION=/dev/pmem0|' /etc/default/ckpt")
}

// cold is the comparison: stop the workloads, reboot, start them again and
// wait until the container has refilled its memory and answers.
func (s *e2eSuite) cold() {
	t, g := s.t, s.g
	t.Helper()
	s.client.Close()
	before := s.state()
	start := time.Now()
	g.Start("runc delete -f e2e-ctr; systemctl stop ckpt-e2e-tree.service; pkill -f '[q]emu-system.*e2e-vm'; systemctl reboot")
	g.WaitBoot(before.boot, 10*time.Minute)
	up := time.Since(start)
	g.MustSh(5*time.Minute, "sh /mnt/host/e2e-start.sh")
	c := dialLineClient(t, fmt.Sprintf("127.0.0.1:%d", g.Fwd[e2eCtrPort]), 5*time.Minute)
	if a, err := c.Ask("sum"); err != nil || !strings.HasPrefix(a, "sum OK") {
		t.Fatalf("container after a cold start: %q, %v", a, err)
	}
	took := time.Since(start)
	s.table = append(s.table, fmt.Sprintf("| plain reboot: stop, reboot, start, refill 256 MiB | %.1f s, counters start again | - | %.1f s until the agent answers | - | - | - | - |", took.Seconds(), up.Seconds()))
	t.Logf("cold update: %.1fs until the container answered again (%.1fs until the agent was up); its counter started again", took.Seconds(), up.Seconds())
}

// countsOnByOne checks that every "prefix N" line of s is one more than
// the one before.
func countsOnByOne(s, prefix string) error {
	var prev int64 = -1
	for _, l := range strings.Split(s, "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(l), prefix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		if prev >= 0 && n != prev+1 {
			return fmt.Errorf("%s%d follows %s%d", prefix, n, prefix, prev)
		}
		prev = n
	}
	if prev < 0 {
		return fmt.Errorf("no %q lines", prefix)
	}
	return nil
}
