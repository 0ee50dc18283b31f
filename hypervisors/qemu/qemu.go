// Package qemu suspends QEMU VMs through QMP: stop, migrate the VM's state
// into a region object, quit once the checkpoint is committed; resume
// starts QEMU again with the recorded command line plus -incoming defer,
// loads the state from the region and continues the VM.
//
// VMs are found by their QMP unix sockets: every socket in a directory
// (default /run/ckpt/qmp, *.qmp and *.sock) and sockets named explicitly.
// QMP serves one client per socket, so the backend keeps one connection
// per VM from discovery to suspend.
//
// The migration stream goes through a pipe whose write end QEMU gets with
// getfd (SCM_RIGHTS) and "migrate fd:NAME"; ckpt copies the pipe into a
// region object, checksumming as it writes, so the path works for every
// region layout and QEMU version (7.2 and later). QEMU's default bandwidth
// limit (32 MiB/s in 7.2) is raised for the dump and put back afterwards.
//
// With QEMU >= 9 and a directory region, QEMU instead writes a mapped-ram
// file straight into the region with several multifd channels in
// parallel, and loads it in place at resume.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// Name is the backend's registered name.
const Name = "qemu"

// KindVM is the kind of a QEMU workload.
const KindVM = "vm"

// Config configures the backend; zero values mean defaults.
type Config struct {
	SocketDir string   `json:"socket_dir"` // QMP sockets to discover (default /run/ckpt/qmp)
	Sockets   []string `json:"sockets"`    // more QMP sockets, anywhere
	LogDir    string   `json:"log_dir"`    // relaunched QEMUs' stdout/stderr (default /var/log/ckpt)
	// MaxBandwidth is the migration bandwidth limit during a dump, in
	// bytes per second (default 1 TiB/s: no limit; -1 keeps QEMU's own,
	// 32 MiB/s in 7.2, for comparison).
	MaxBandwidth int64 `json:"max_bandwidth"`
	// MultifdChannels is the number of parallel channels for a dump into a
	// directory region with QEMU >= 9 (mapped-ram + multifd); 0 picks
	// min(4, CPUs), -1 always uses the single stream.
	MultifdChannels int `json:"multifd_channels"`
	// PreservedRAMDirs are directories whose files survive the update (a
	// DAX filesystem on the preserved region). A VM whose RAM is a shared
	// memory-backend-file in one of them is saved with its RAM in place
	// (cpr-reboot); see cpr.go.
	PreservedRAMDirs []string `json:"preserved_ram_dirs"`
	// StartTimeout bounds a relaunched QEMU's start until its QMP socket
	// answers (default 1 minute).
	StartTimeout time.Duration `json:"-"`
}

func (c Config) withDefaults() Config {
	if c.SocketDir == "" {
		c.SocketDir = "/run/ckpt/qmp"
	}
	if c.LogDir == "" {
		c.LogDir = "/var/log/ckpt"
	}
	if c.MaxBandwidth == 0 {
		c.MaxBandwidth = 1 << 40
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = time.Minute
	}
	return c
}

// Backend is the qemu backend. Its methods are safe for concurrent use on
// different VMs.
type Backend struct {
	cfg Config
	log *slog.Logger

	mu  sync.Mutex
	vms map[string]*vm // by socket path
}

// vm is one QEMU reached through its QMP socket.
type vm struct {
	mu         sync.Mutex // one operation on the VM at a time
	mon        *Monitor
	socket     string
	id         string
	wasRunning bool            // status at Freeze, for Thaw
	frozeHere  bool            // Freeze ran in this process
	bandwidth  json.RawMessage // max-bandwidth before the dump
	out        *outgoing       // a pre-copy under way (PreDump → Dump)
}

var (
	_ hypervisors.Backend     = (*Backend)(nil)
	_ hypervisors.Preflighter = (*Backend)(nil)
)

func init() {
	hypervisors.Register(hypervisors.Registration{
		Name:   Name,
		Config: func() any { return &Config{} },
		Flags: []hypervisors.Flag{
			{Name: "qmp-dir", Key: "socket_dir", Usage: "directory of VMs' QMP sockets, *.qmp and *.sock (default /run/ckpt/qmp)"},
			{Name: "qmp-socket", Key: "sockets", List: true, Usage: "a VM's QMP socket (repeatable)"},
			{Name: "preserved-ram-dir", Key: "preserved_ram_dirs", List: true, Usage: "directory on preserved memory holding VMs' RAM files (repeatable)"},
		},
		Init: func(_ context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(*ic.Config.(*Config), ic.Logger)
		},
	})
}

// New returns the backend.
func New(cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.LogDir, 0o700); err != nil {
		return nil, err
	}
	return &Backend{cfg: cfg, log: log, vms: map[string]*vm{}}, nil
}

// Name implements hypervisors.Backend.
func (b *Backend) Name() string { return Name }

// sockets lists the QMP sockets to look at.
func (b *Backend) sockets() []string {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, pat := range []string{"*.qmp", "*.sock"} {
		ms, _ := filepath.Glob(filepath.Join(b.cfg.SocketDir, pat))
		for _, m := range ms {
			add(m)
		}
	}
	for _, s := range b.cfg.Sockets {
		add(s)
	}
	sort.Strings(out)
	return out
}

// monitor returns the VM behind socket, connecting once.
func (b *Backend) monitor(ctx context.Context, socket string) (*vm, error) {
	b.mu.Lock()
	v := b.vms[socket]
	b.mu.Unlock()
	if v != nil {
		select {
		case <-v.mon.done: // QEMU went away or the connection broke
		default:
			return v, nil
		}
	}
	mon, err := Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	v = &vm{mon: mon, socket: socket}
	b.mu.Lock()
	if old := b.vms[socket]; old != nil {
		old.mon.Close()
	}
	b.vms[socket] = v
	b.mu.Unlock()
	return v, nil
}

// Close drops every QMP connection the backend holds (QEMU accepts one
// client per socket, so another backend instance can connect afterwards).
// The VMs are not touched.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s, v := range b.vms {
		v.mon.Close()
		delete(b.vms, s)
	}
	return nil
}

// forget drops a VM's connection (after Finish, or when its QEMU quit).
func (b *Backend) forget(socket string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if v := b.vms[socket]; v != nil {
		v.mon.Close()
		delete(b.vms, socket)
	}
}

// Discover implements hypervisors.Backend.
func (b *Backend) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	var ws []hypervisors.Workload
	for _, s := range b.sockets() {
		v, err := b.monitor(ctx, s)
		if err != nil {
			b.log.Warn("QMP socket does not answer", "socket", s, "err", err)
			continue
		}
		w, err := b.describe(ctx, v)
		if err != nil {
			b.log.Warn("cannot query VM", "socket", s, "err", err)
			continue
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func (b *Backend) describe(ctx context.Context, v *vm) (hypervisors.Workload, error) {
	var name struct {
		Name string `json:"name"`
	}
	if err := v.mon.Execute(ctx, "query-name", nil, &name); err != nil {
		return hypervisors.Workload{}, err
	}
	var mem struct {
		Base    int64 `json:"base-memory"`
		Plugged int64 `json:"plugged-memory"`
	}
	if err := v.mon.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
		return hypervisors.Workload{}, err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := v.mon.Execute(ctx, "query-status", nil, &st); err != nil {
		return hypervisors.Workload{}, err
	}
	settings, err := migrationSettings(ctx, v)
	if err != nil {
		return hypervisors.Workload{}, err
	}
	id := name.Name
	if id == "" {
		id = strings.TrimSuffix(filepath.Base(v.socket), filepath.Ext(v.socket))
	}
	v.id = id
	ver := v.mon.Version.QEMU
	return hypervisors.Workload{ID: id, Kind: KindVM, Backend: Name, PID: v.mon.PID, MemoryBytes: mem.Base + mem.Plugged,
		Attrs: map[string]string{"socket": v.socket, "status": st.Status, attrSettings: settings,
			"qemu": fmt.Sprintf("%d.%d.%d", ver.Major, ver.Minor, ver.Micro)}}, nil
}

// vmOf finds the VM of a workload: by its socket attribute, else by ID.
func (b *Backend) vmOf(ctx context.Context, w hypervisors.Workload) (*vm, error) {
	if s := w.Attrs["socket"]; s != "" {
		v, err := b.monitor(ctx, s)
		if err != nil && gone(err) {
			return nil, fmt.Errorf("%w: %s: %v", hypervisors.ErrNotFound, w.ID, err)
		}
		return v, err
	}
	ws, err := b.Discover(ctx)
	if err != nil {
		return nil, err
	}
	for _, x := range ws {
		if x.ID == w.ID {
			return b.monitor(ctx, x.Attrs["socket"])
		}
	}
	return nil, fmt.Errorf("%w: no VM %s behind the QMP sockets", hypervisors.ErrNotFound, w.ID)
}

// Freeze implements hypervisors.Backend: "stop".
func (b *Backend) Freeze(ctx context.Context, w hypervisors.Workload) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	// Not cut short by ctx once begun: a "stop" already sent takes effect
	// anyway, and an answer left unread would leave the monitor out of
	// step for Thaw (CancelMidFreeze once left a VM stopped). Both
	// commands answer at once.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var st struct {
		Running bool `json:"running"`
	}
	if err := v.mon.Execute(qctx, "query-status", nil, &st); err != nil {
		return err
	}
	if v.out == nil { // a pre-copy saw it running (QEMU may have stopped it since)
		v.wasRunning = st.Running
	}
	v.frozeHere = true
	return v.mon.Execute(qctx, "stop", nil, nil)
}

// Thaw implements hypervisors.Backend: "cont", unless the VM was paused
// before Freeze. It also puts back the bandwidth limit a Dump raised.
func (b *Backend) Thaw(ctx context.Context, w hypervisors.Workload) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	b.abortPreCopy(ctx, v)
	if err := b.settleMigration(ctx, v); err != nil {
		return err
	}
	var errs []error
	if s := w.Attrs[attrSettings]; s != "" {
		// What the plan saw, journalled: a recover after a crash puts
		// back what a dump changed, too.
		errs = append(errs, untilSettled(ctx, func() error { return restoreSettings(ctx, v, s) }))
	} else if v.bandwidth != nil {
		errs = append(errs, v.mon.Execute(ctx, "migrate-set-parameters", map[string]json.RawMessage{"max-bandwidth": v.bandwidth}, nil))
	}
	v.bandwidth = nil
	cont := v.wasRunning
	if !v.frozeHere {
		// Another ckpt froze it and crashed (recover): continue a VM that
		// is paused, or was left by a failed migration.
		var st struct {
			Status string `json:"status"`
		}
		if err := v.mon.Execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		cont = st.Status == "paused" || st.Status == "postmigrate" || st.Status == "finish-migrate"
		if before := w.Attrs["status"]; before != "" && before != "running" {
			cont = false // paused before the suspend: it stays so
		}
	}
	b.log.Debug("thaw", "vm", v.id, "froze_here", v.frozeHere, "cont", cont)
	if cont {
		errs = append(errs, v.mon.Execute(ctx, "cont", nil, nil), running(ctx, v))
	}
	v.frozeHere = false
	return errors.Join(errs...)
}

// running checks that the VM runs (after a "cont"): a rollback is done
// only once it is.
func running(ctx context.Context, v *vm) error {
	var st struct {
		Status string `json:"status"`
	}
	if err := v.mon.Execute(ctx, "query-status", nil, &st); err != nil {
		return err
	}
	if st.Status != "running" {
		return fmt.Errorf("thaw: the VM is %s after cont", st.Status)
	}
	return nil
}

// Finish implements hypervisors.Backend: "quit", then wait for the
// process to go.
func (b *Backend) Finish(ctx context.Context, w hypervisors.Workload) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	pid := v.mon.PID
	err = v.mon.Execute(ctx, "quit", nil, nil)
	b.forget(v.socket)
	if err != nil && !strings.Contains(err.Error(), "connection closed") {
		return err
	}
	for pid > 0 && processAlive(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("finish %s: QEMU (pid %d) did not exit: %w", w.ID, pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// gone says whether a failed connect proves the VM's QEMU gone: its socket
// is missing, or nobody listens on it. A timeout, a cancel or a busy
// socket prove nothing.
func gone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// processAlive: the pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// Preflight implements hypervisors.Preflighter: the VM must be relaunchable
// (its command line readable, its QMP socket created by QEMU itself) and
// QEMU must not report migration blockers.
func (b *Backend) Preflight(ctx context.Context, w hypervisors.Workload) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	l, err := launchOf(v.mon.PID)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", hypervisors.ErrNotCheckpointable, w.ID, err)
	}
	if !strings.Contains(strings.Join(l.Argv, " "), v.socket) {
		return fmt.Errorf("%w: %s: QMP socket %s is not on QEMU's command line, so a relaunched QEMU would not recreate it",
			hypervisors.ErrNotCheckpointable, w.ID, v.socket)
	}
	var mig struct {
		Blocked []string `json:"blocked-reasons"`
	}
	if err := v.mon.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return err
	}
	if len(mig.Blocked) > 0 {
		return fmt.Errorf("%w: %s: QEMU blocks migration: %s", hypervisors.ErrNotCheckpointable, w.ID, strings.Join(mig.Blocked, "; "))
	}
	return nil
}

// launch is what it takes to start a QEMU again.
type launch struct {
	Argv []string `json:"argv"`
	Dir  string   `json:"dir"`
	Env  []string `json:"env"`
}

func launchOf(pid int) (launch, error) {
	if pid <= 0 {
		return launch{}, errors.New("QEMU's pid is unknown")
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return launch{}, err
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return launch{}, err
	}
	dir, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return launch{}, err
	}
	split := func(b []byte) []string {
		s := strings.TrimRight(string(b), "\x00")
		if s == "" {
			return nil
		}
		return strings.Split(s, "\x00")
	}
	l := launch{Argv: split(cmdline), Dir: dir, Env: split(env)}
	if len(l.Argv) == 0 {
		return launch{}, fmt.Errorf("pid %d has an empty command line", pid)
	}
	if !filepath.IsAbs(l.Argv[0]) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && !strings.HasSuffix(exe, " (deleted)") {
			l.Argv[0] = exe
		}
	}
	return l, nil
}

// copyErr runs a copy in the background and returns its result.
func copyErr(dst io.Writer, src io.Reader) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := io.Copy(dst, src)
		ch <- err
	}()
	return ch
}
