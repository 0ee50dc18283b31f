package criu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/timerfd"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const tfdPeriod = 300 * time.Millisecond

func tfdEntry(id uint32, flags uint32, v, i time.Duration) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_TIMERFD.Enum(), Id: proto.Uint32(id), Tfd: &timerfd.TimerfdEntry{
		Id: proto.Uint32(id), Flags: proto.Uint32(02004002), Fown: &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0),
			Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)},
		Clockid: proto.Uint32(1), Ticks: proto.Uint64(1), SettimeFlags: proto.Uint32(flags),
		Vsec: proto.Uint64(uint64(v / time.Second)), Vnsec: proto.Uint64(uint64(v % time.Second)),
		Isec: proto.Uint64(uint64(i / time.Second)), Insec: proto.Uint64(uint64(i % time.Second)),
	}}
}

// writeFilesImg encodes entries as files.img in dir, as CRIU frames it.
func writeFilesImg(t *testing.T, dir string, entries ...proto.Message) {
	t.Helper()
	m := magic.LoadMagic()
	b := binary.LittleEndian.AppendUint32(nil, uint32(m.ByName["IMG_COMMON"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.ByName["FILES"]))
	for _, e := range entries {
		p, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		b = append(binary.LittleEndian.AppendUint32(b, uint32(len(p))), p...)
	}
	if err := os.WriteFile(filepath.Join(dir, "files.img"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// decodeFiles decodes files.img as it is (rearmImage would change it).
func decodeFiles(t *testing.T, path string) []*fdinfo.FileEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var es []*fdinfo.FileEntry
	for off := 8; off < len(b); {
		n := int(binary.LittleEndian.Uint32(b[off:]))
		var e fdinfo.FileEntry
		if err := proto.Unmarshal(b[off+4:off+4+n], &e); err != nil {
			t.Fatal(err)
		}
		es = append(es, &e)
		off += 4 + n
	}
	return es
}

func readTimerfds(t *testing.T, path string) map[uint32]*timerfd.TimerfdEntry {
	t.Helper()
	m := map[uint32]*timerfd.TimerfdEntry{}
	for _, e := range decodeFiles(t, path) {
		if tfd := e.GetTfd(); tfd != nil {
			m[tfd.GetId()] = tfd
		}
	}
	return m
}

// TestRearmTimerfdImages: only a relative periodic timerfd with it_value 0
// is changed, in an overlay; the original images stay as they were, the
// other images are links to them, fields crit does not know survive, and
// CRIU's restore output is not linked.
func TestRearmTimerfdImages(t *testing.T) {
	img := t.TempDir()
	expired := tfdEntry(1, 0, 0, tfdPeriod)
	// A field a newer CRIU might add: it must come through the rewrite.
	expired.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
	writeFilesImg(t, img,
		expired,
		tfdEntry(2, 0, 5*time.Millisecond, tfdPeriod),     // running
		tfdEntry(3, tfdTimerAbstime, 0, tfdPeriod),        // absolute: CRIU re-anchors it
		tfdEntry(4, 0, 0, 0),                              // one-shot, fired: disarmed is right
		tfdEntry(5, 0, 0, 2*time.Second+time.Millisecond), // expired, period over a second
		&fdinfo.FileEntry{Type: fdinfo.FdTypes_EVENTFD.Enum(), Id: proto.Uint32(6), Efd: &eventfd.EventfdFileEntry{
			Id: proto.Uint32(6), Flags: proto.Uint32(2), Fown: tfdEntry(0, 0, 0, 0).Tfd.Fown, Counter: proto.Uint64(42)}},
	)
	for _, name := range []string{"pages-1.img", "stats-restore"} {
		if err := os.WriteFile(filepath.Join(img, name), []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	orig, _ := os.ReadFile(filepath.Join(img, "files.img"))
	overlay := filepath.Join(t.TempDir(), "overlay")

	dir, n, err := RearmTimerfdImages(img, overlay)
	if err != nil || dir != overlay || n != 2 {
		t.Fatalf("RearmTimerfdImages = %q, %d, %v; want the overlay and 2 timerfds", dir, n, err)
	}
	got := readTimerfds(t, filepath.Join(overlay, "files.img"))
	want := map[uint32][2]uint64{1: {0, uint64(tfdPeriod)}, 2: {0, uint64(5 * time.Millisecond)}, 3: {0, 0}, 4: {0, 0}, 5: {2, uint64(time.Millisecond)}}
	for id, v := range want {
		if tfd := got[id]; tfd.GetVsec() != v[0] || tfd.GetVnsec() != v[1] {
			t.Errorf("timerfd %d: it_value (%d, %d), want (%d, %d)", id, tfd.GetVsec(), tfd.GetVnsec(), v[0], v[1])
		}
	}
	if u := got[1].ProtoReflect().GetUnknown(); len(u) != 0 {
		t.Errorf("an unknown field landed in the timerfd entry: %x", u)
	}
	es := decodeFiles(t, filepath.Join(overlay, "files.img"))
	if len(es) != 6 || es[5].GetEfd().GetCounter() != 42 {
		t.Fatalf("entries: %v", es)
	}
	if u := es[0].ProtoReflect().GetUnknown(); len(u) == 0 {
		t.Errorf("the unknown field of entry 1 was lost")
	}
	if b, _ := os.ReadFile(filepath.Join(img, "files.img")); !bytes.Equal(b, orig) {
		t.Error("the original files.img was changed")
	}
	if l, err := os.Readlink(filepath.Join(overlay, "pages-1.img")); err != nil || filepath.IsAbs(l) {
		t.Errorf("pages-1.img in the overlay: %q, %v; want a relative link", l, err)
	}
	if b, err := os.ReadFile(filepath.Join(overlay, "pages-1.img")); err != nil || string(b) != "pages-1.img" {
		t.Errorf("pages-1.img through the overlay: %q, %v; want the original", b, err)
	}
	if _, err := os.Lstat(filepath.Join(overlay, "stats-restore")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stats-restore was linked into the overlay: %v", err)
	}

	// Nothing to re-arm: the images are used as they are, no overlay.
	img2, overlay2 := t.TempDir(), filepath.Join(t.TempDir(), "overlay")
	writeFilesImg(t, img2, tfdEntry(1, 0, 5*time.Millisecond, tfdPeriod))
	if dir, n, err := RearmTimerfdImages(img2, overlay2); dir != img2 || n != 0 || err != nil {
		t.Errorf("running timer: %q, %d, %v; want the images as they are", dir, n, err)
	}
	if _, err := os.Stat(overlay2); err == nil {
		t.Error("an overlay was made with nothing to re-arm")
	}

	// A damaged image is refused before crit allocates what it claims.
	img3 := t.TempDir()
	os.WriteFile(filepath.Join(img3, "files.img"), append(orig[:8:8], 0xff, 0xff, 0xff, 0x7f, 1, 2), 0o600)
	if dir, _, err := RearmTimerfdImages(img3, filepath.Join(t.TempDir(), "o")); err == nil || dir != img3 {
		t.Errorf("damaged files.img: %q, %v; want an error and the images as they are", dir, err)
	}
}

// tfdOutput follows tfdload's lines: first on its stdout pipe, after a
// restore in the log the backend connects it to.
type tfdOutput struct {
	mu   sync.Mutex
	last tfdLine // from the pipe
	log  string
}

// tfdLine is one line of tfdload (see testdata/tfdload.c).
type tfdLine struct {
	Tick, Read, Efd uint64
	Sig, Ep         int
	Next            string
}

func parseTfdLine(s string) (tfdLine, bool) {
	var l tfdLine
	_, err := fmt.Sscanf(s, "tick %d read %d efd %d sig %d ep %d next %s", &l.Tick, &l.Read, &l.Efd, &l.Sig, &l.Ep, &l.Next)
	return l, err == nil
}

func (o *tfdOutput) drain(f *os.File) {
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l, ok := parseTfdLine(sc.Text()); ok {
			o.mu.Lock()
			o.last = l
			o.mu.Unlock()
		}
	}
}

// latest is the line with the highest count.
func (o *tfdOutput) latest() tfdLine {
	o.mu.Lock()
	l := o.last
	o.mu.Unlock()
	b, _ := os.ReadFile(o.log)
	for _, s := range strings.Split(string(b), "\n") {
		if v, ok := parseTfdLine(s); ok && v.Tick > l.Tick {
			l = v
		}
	}
	return l
}

// tfdload builds testdata/tfdload.c, statically (the container has no libc).
func tfdload(t *testing.T) string {
	t.Helper()
	gcc := testenv.RequireTool(t, "gcc")
	out := filepath.Join(t.TempDir(), "tfdload")
	if b, err := exec.Command(gcc, "-static", "-O2", "-Wall", "-o", out, "testdata/tfdload.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

func newTfdBackend(t *testing.T, edit func(*Config)) (*Runtime, Config) {
	t.Helper()
	testenv.RequireRoot(t)
	cfg := Config{
		Runc:     testenv.RequireTool(t, "runc"),
		CRIU:     testenv.RequireTool(t, "criu"),
		RuncRoot: filepath.Join(t.TempDir(), "runc"),
		WorkDir:  filepath.Join(t.TempDir(), "work"),
		LogDir:   filepath.Join(t.TempDir(), "logs"),
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := New(context.Background(), cfg, nil)
	if errors.Is(err, hypervisors.ErrSkipBackend) {
		testenv.Missing(t, "criu backend declined: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b, cfg
}

// startTfdContainer runs tfdload in a runc container, stdout on a pipe.
func startTfdContainer(t *testing.T, cfg Config) (string, *tfdOutput) {
	t.Helper()
	bin := tfdload(t)
	id := fmt.Sprintf("ckpt-tfd-%d-%d", os.Getpid(), workloads.Seq.Add(1))
	dir := workloads.Bundle(t, nil, "/bin/tfdload", strconv.Itoa(int(tfdPeriod/time.Millisecond)))
	b, err := os.ReadFile(bin)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "rootfs", "bin", "tfdload"), b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	o := &tfdOutput{log: filepath.Join(cfg.LogDir, id+".log")}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cfg.Runc, "--root", cfg.RuncRoot, "run", "--detach", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	pw.Close()
	go o.drain(pr)
	t.Cleanup(func() { exec.Command(cfg.Runc, "--root", cfg.RuncRoot, "delete", "--force", id).Run() })
	return id, o
}

// startTfdTree runs tfdload as a plain process tree in a fresh cgroup,
// under a supervisor that reaps it (as a service manager would).
func startTfdTree(t *testing.T, cfg Config, name string) *tfdOutput {
	t.Helper()
	bin := tfdload(t)
	dirs := []string{"/sys/fs/cgroup/" + name}
	if _, err := os.Stat("/sys/fs/cgroup/freezer"); err == nil {
		dirs = []string{"/sys/fs/cgroup/freezer/" + name, "/sys/fs/cgroup/memory/" + name}
	}
	join := ""
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		join += fmt.Sprintf("echo $$ > %s/cgroup.procs; ", d)
	}
	sup := testenv.StaticBinary(t, "./internal/testload")
	cmd := exec.Command(sup, "-supervise", "/bin/sh", "-c", join+"exec "+bin+" "+strconv.Itoa(int(tfdPeriod/time.Millisecond)))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	o := &tfdOutput{log: filepath.Join(cfg.LogDir, name+".log")}
	go o.drain(pr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		os.WriteFile(dirs[0]+"/freezer.state", []byte("THAWED"), 0)
		for _, d := range dirs {
			for i := 0; i < 50 && os.Remove(d) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	return o
}

// suspendResume freezes w, waits past one period (the timer expires
// unread, as behind a long freeze), dumps it into a fresh region of kind,
// seals, ends the original and restores it, as a suspend and resume do.
func suspendResume(t *testing.T, b *Runtime, w hypervisors.Workload, kind string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, drop := testenv.TempRegion(t, "", kind, 256*memregion.MiB)
	defer drop()
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	time.Sleep(tfdPeriod + tfdPeriod/3)
	rec, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
	if err != nil {
		b.Thaw(ctx, w)
		t.Fatalf("Dump: %v", err)
	}
	var objs []string
	for _, o := range r.Objects() {
		objs = append(objs, o.Name)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{
		ID: w.ID, Kind: w.Kind, Backend: w.Backend, MemoryBytes: w.MemoryBytes, Objects: objs, Restore: rec}}}
	if err := r.Seal(ctx, m); err != nil {
		b.Thaw(ctx, w)
		t.Fatalf("Seal: %v", err)
	}
	if err := b.Finish(ctx, w); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if m, err = r.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	src := hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}
	if err := b.Restore(ctx, w, json.RawMessage(m.Workloads[0].Restore), src); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// The images read in place were not rewritten: a retry would verify.
	if _, err := r.Verify(ctx); err != nil {
		t.Fatalf("Verify after the restore: %v", err)
	}
}

// restoreMany suspends and resumes the workload id n times, alternating a
// directory region (images read in place) and a raw one (staged), and
// checks after each restore that the timer goes on firing: two more
// expirations than the one pending at the dump. It reports how many
// restores stalled and checks the eventfd counter, the pending signal and
// the epoll set as well.
func restoreMany(t *testing.T, b *Runtime, id string, o *tfdOutput, n int) {
	waitTick := func(min uint64, d time.Duration) (tfdLine, bool) {
		deadline := time.Now().Add(d)
		for {
			l := o.latest()
			if l.Tick >= min || time.Now().After(deadline) {
				return l, l.Tick >= min
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if l, ok := waitTick(2, 10*time.Second); !ok {
		t.Fatalf("tfdload does not tick: %+v", l)
	}
	stalled := 0
	for i := range n {
		kind := []string{memregion.KindDir, memregion.KindRaw}[i%2]
		ws, err := b.Discover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var w hypervisors.Workload
		for _, x := range ws {
			if x.ID == id {
				w = x
			}
		}
		if w.ID == "" {
			t.Fatalf("restore %d: %s not found", i, id)
		}
		before := o.latest().Tick
		suspendResume(t, b, w, kind)
		// One expiration was pending at the dump; two more need a timer
		// that is armed.
		l, ok := waitTick(before+3, 4*tfdPeriod+3*time.Second)
		if !ok {
			stalled++
			t.Errorf("restore %d (%s region): counter stopped at %d (was %d at the freeze): %+v", i+1, kind, l.Tick, before, l)
		}
		if l.Efd != 42 || l.Sig != 1 || l.Ep != 1 {
			t.Errorf("restore %d: eventfd %d (want 42), SIGUSR1 pending %d, timerfd in the epoll set %d (want 1, 1)", i+1, l.Efd, l.Sig, l.Ep)
		}
	}
	t.Logf("%d of %d restores stalled", stalled, n)
}

// TestTimerfdSurvivesRestores restores a container whose periodic timerfd
// expired while it was frozen, many times: every time the event loop goes
// on (CRIU alone restores the timer disarmed; see timerfd.go).
func TestTimerfdSurvivesRestores(t *testing.T) {
	b, cfg := newTfdBackend(t, nil)
	id, o := startTfdContainer(t, cfg)
	restoreMany(t, b, id, o, 20)
}

// TestTimerfdSurvivesTreeRestores does the same for a plain process tree
// (CRIU's RPC, restoreTreeFrom).
func TestTimerfdSurvivesTreeRestores(t *testing.T) {
	name := fmt.Sprintf("ckpt-tfdtree-%d", os.Getpid())
	b, cfg := newTfdBackend(t, func(c *Config) { c.ProcessTrees = []string{"/" + name} })
	o := startTfdTree(t, cfg, name)
	restoreMany(t, b, treeIDPrefix+"/"+name, o, 6)
}
