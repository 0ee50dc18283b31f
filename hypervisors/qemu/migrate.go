package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"golang.org/x/sys/unix"
)

// stateObject is the object holding a VM's migration stream.
const stateObject = "state"

// recipe is what Restore needs, stored opaque in the manifest.
type recipe struct {
	ID      string     `json:"id"`
	Socket  string     `json:"socket"`
	Launch  launch     `json:"launch"`
	Running bool       `json:"running"` // continue after the restore
	Mapped  *mapped    `json:"mapped_ram,omitempty"`
	CPR     *cpr       `json:"cpr_reboot,omitempty"` // RAM left in place
	QEMU    string     `json:"qemu"`
	Stats   *Migration `json:"stats,omitempty"`
}

// Migration is QEMU's own account of a migration (query-migrate).
type Migration struct {
	Status      string `json:"status"`
	TotalTimeMS int64  `json:"total-time"`
	Setup       int64  `json:"setup-time"`
	RAM         *struct {
		Transferred int64   `json:"transferred"`
		Total       int64   `json:"total"`
		Duplicate   int64   `json:"duplicate"`
		Normal      int64   `json:"normal"`
		Mbps        float64 `json:"mbps"`
		// DirtySyncCount is 2 once all RAM was sent once.
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram,omitempty"`
	// DowntimeMS is QEMU's account of how long the VM was stopped for
	// the migration (with a pre-copy: the last dirty pages and devices).
	DowntimeMS int64  `json:"downtime,omitempty"`
	ErrorDesc  string `json:"error-desc,omitempty"`
	WallMS     int64  `json:"wall_ms"` // ckpt's own measurement
}

// Dump implements hypervisors.Backend: the stopped VM's state goes through
// a pipe into the object "state". On any failure the migration is
// cancelled; Thaw continues the VM. A VM whose PreDump began a pre-copy
// ends that migration instead (see precopy.go).
func (b *Backend) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.out != nil {
		return b.endPreCopy(ctx, v, w)
	}
	rec, ds, memBytes, err := b.recipeFor(ctx, v, w, dst)
	if err != nil {
		return nil, err
	}
	if err := b.raiseBandwidth(ctx, v); err != nil {
		return nil, err
	}
	var stats *Migration
	switch {
	case rec.CPR != nil:
		stats, err = b.migrateCPR(ctx, v, dst)
	case rec.Mapped != nil:
		stats, err = b.migrateMapped(ctx, v, ds, rec.Mapped.Channels)
	default:
		stats, err = b.migrateStream(ctx, v, dst, memBytes)
	}
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", w.ID, err)
	}
	rec.Stats = stats
	b.log.Debug("dumped VM", "workload", w.ID, "stats", stats)
	return json.Marshal(rec)
}

// recipeFor decides how the VM is dumped into dst: its RAM left in place
// (cpr-reboot), a mapped-ram file in a directory region, or a stream. It
// returns the DirectSink of a mapped-ram dump and the VM's RAM size.
func (b *Backend) recipeFor(ctx context.Context, v *vm, w hypervisors.Workload, dst hypervisors.ObjectSink) (recipe, hypervisors.DirectSink, int64, error) {
	l, err := launchOf(v.mon.PID)
	if err != nil {
		return recipe{}, nil, 0, fmt.Errorf("dump %s: %w", w.ID, err)
	}
	wd, err := b.describe(ctx, v)
	if err != nil {
		return recipe{}, nil, 0, err
	}
	rec := recipe{ID: w.ID, Socket: v.socket, Launch: l, Running: v.wasRunning, QEMU: wd.Attrs["qemu"]}
	if c, err := b.preservedRAM(ctx, v, wd.MemoryBytes); err == nil {
		rec.CPR = c
	} else if len(b.cfg.PreservedRAMDirs) > 0 {
		b.log.Info("VM's RAM will be copied", "workload", w.ID, "reason", err)
	}
	ds, direct := dst.(hypervisors.DirectSink)
	if n := b.channels(v); rec.CPR == nil && direct && n > 0 {
		if _, err := ds.Dir(filepath.Dir(mappedObject)); err == nil {
			rec.Mapped = &mapped{Channels: n}
		}
	}
	return rec, ds, wd.MemoryBytes, nil
}

// raiseBandwidth lifts the migration bandwidth limit to
// Config.MaxBandwidth; Thaw puts the old one back.
func (b *Backend) raiseBandwidth(ctx context.Context, v *vm) error {
	var params map[string]json.RawMessage
	if err := v.mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return err
	}
	if v.bandwidth == nil {
		v.bandwidth = params["max-bandwidth"]
	}
	if b.cfg.MaxBandwidth > 0 {
		return v.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": b.cfg.MaxBandwidth}, nil)
	}
	return nil
}

// migrateStream writes the VM's state as one stream into the object
// stateObject.
func (b *Backend) migrateStream(ctx context.Context, v *vm, dst hypervisors.ObjectSink, size int64) (*Migration, error) {
	obj, err := dst.Create(stateObject, size)
	if err != nil {
		return nil, err
	}
	m, err := b.migrateOut(ctx, v, obj)
	if cerr := obj.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("storing the state: %w", cerr)
	}
	return m, err
}

// migrateOut sends the VM's state into w and waits for QEMU to finish.
func (b *Backend) migrateOut(ctx context.Context, v *vm, w interface{ Write([]byte) (int, error) }) (*Migration, error) {
	r, pw, err := pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	const fdname = "ckpt-migrate-out"
	err = v.mon.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdname}, pw)
	pw.Close() // QEMU holds its own copy; EOF comes when QEMU closes it
	if err != nil {
		return nil, err
	}
	// A failed copy (region full, say) stops reading the pipe, and QEMU
	// would block writing it: it cancels the wait.
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var copyErrV error
	copyDone := make(chan struct{})
	go func() {
		if copyErrV = <-copyErr(w, r); copyErrV != nil {
			cancel()
		}
		close(copyDone)
	}()
	start := time.Now()
	if err := v.mon.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdname}, nil); err != nil {
		b.cancelMigration(ctx, v) // a "migrate" whose answer was cut short may have started
		v.mon.Execute(context.WithoutCancel(ctx), "closefd", map[string]string{"fdname": fdname}, nil)
		r.Close()
		<-copyDone
		return nil, err
	}
	m, err := b.waitMigration(waitCtx, v, "migration out")
	if err != nil {
		r.Close() // a write blocked on the pipe fails (EPIPE)
		b.cancelMigration(ctx, v)
		<-copyDone
		if copyErrV != nil {
			err = fmt.Errorf("storing the migration stream: %w", copyErrV)
		}
		return m, err
	}
	<-copyDone
	if copyErrV != nil {
		return m, fmt.Errorf("storing the migration stream: %w", copyErrV)
	}
	m.WallMS = time.Since(start).Milliseconds()
	return m, nil
}

// cancelMigration cancels an outgoing migration and waits (briefly) until
// QEMU has let go of it, so a following "cont" is accepted.
func (b *Backend) cancelMigration(ctx context.Context, v *vm) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	v.mon.Execute(ctx, "migrate_cancel", nil, nil)
	b.waitMigration(ctx, v, "cancel")
}

// settleMigration cancels, and waits out, an outgoing migration still
// under way (a dump cut short, or a ckpt killed mid-dump), so that the
// VM's settings can be put back and it can run.
func (b *Backend) settleMigration(ctx context.Context, v *vm) error {
	var m Migration
	if err := v.mon.Execute(ctx, "query-migrate", nil, &m); err != nil {
		return err
	}
	switch m.Status {
	case "", "none", "completed", "failed", "cancelled":
		return nil
	}
	b.log.Info("waiting out a migration still under way", "vm", v.id, "status", m.Status)
	b.endMigration(ctx, v)
	return nil
}

// migrationGrace is how long a migration a cancel cut short is given to
// end on its own before it is cancelled.
const migrationGrace = 2 * time.Minute

// endMigration lets an outgoing migration end on its own, for at most
// migrationGrace, and cancels it only then. QEMU 10.0 can crash (a
// segfault in the multifd threads) when a mapped-ram migration is
// cancelled just after it began; one into a file ends at memory speed,
// and the VM stays paused (postmigrate) for the rollback's "cont".
func (b *Backend) endMigration(ctx context.Context, v *vm) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), migrationGrace)
	defer cancel()
	none := 0
	for {
		var m Migration
		if err := v.mon.Execute(wctx, "query-migrate", nil, &m); err != nil {
			return
		}
		switch m.Status {
		case "completed", "failed", "cancelled":
			return
		case "", "none":
			if none++; none > 20 { // a "migrate" that never began
				return
			}
		}
		select {
		case <-wctx.Done():
			b.cancelMigration(ctx, v)
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitMigration polls query-migrate until the migration ends.
func (b *Backend) waitMigration(ctx context.Context, v *vm, what string) (*Migration, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var m Migration
		if err := v.mon.Execute(ctx, "query-migrate", nil, &m); err != nil {
			return nil, err
		}
		switch m.Status {
		case "completed":
			return &m, nil
		case "failed", "cancelled":
			return &m, fmt.Errorf("%s %s: %s", what, m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return &m, fmt.Errorf("%s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// pipe returns a pipe with a 1 MiB buffer (fewer wakeups for a GB stream).
func pipe() (*os.File, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	return r, w, nil
}

// Restore implements hypervisors.Backend: start QEMU with the recorded
// command line plus -incoming defer, feed it the state, continue it. The
// new QEMU runs detached from ckpt; its output goes to LogDir/<id>.log.
// If the state object turns out corrupt, the new QEMU is ended and the
// error says so; the region keeps the images.
func (b *Backend) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("restore %s: bad recipe: %w", w.ID, err)
	}
	if rec.CPR != nil {
		if err := rec.CPR.checkRAM(); err != nil {
			return fmt.Errorf("restore %s: %w", w.ID, err)
		}
	}
	cmd, err := b.relaunch(rec)
	if err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	fail := func(err error) error {
		cmd.Process.Kill()
		b.forget(rec.Socket)
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	v, err := b.waitSocket(ctx, rec.Socket, cmd)
	if err != nil {
		return fail(err)
	}
	var m *Migration
	if rec.CPR != nil {
		if err := setCPR(ctx, v, true); err != nil {
			return fail(err)
		}
		m, err = b.migrateIn(ctx, v, src)
		if err == nil {
			err = setCPR(ctx, v, false)
		}
	} else if rec.Mapped != nil {
		ds, ok := src.(hypervisors.DirectSource)
		if !ok {
			return fail(fmt.Errorf("a mapped-ram state needs a directory region"))
		}
		m, err = b.migrateInMapped(ctx, v, ds, rec.Mapped.Channels)
	} else {
		m, err = b.migrateIn(ctx, v, src)
	}
	if err != nil {
		return fail(err)
	}
	if rec.Running {
		if err := v.mon.Execute(ctx, "cont", nil, nil); err != nil {
			return fail(err)
		}
	}
	b.log.Debug("restored VM", "workload", w.ID, "pid", cmd.Process.Pid, "migration", m)
	b.forget(rec.Socket) // leave the socket to the operator's tools
	return nil
}

// migrateIn feeds the stream object to the waiting QEMU through a pipe.
// A corrupt object fails the copy at its end, before the VM continues.
func (b *Backend) migrateIn(ctx context.Context, v *vm, src hypervisors.ObjectSource) (*Migration, error) {
	obj, err := src.Open(stateObject)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	pr, pw, err := pipe()
	if err != nil {
		return nil, err
	}
	const fdname = "ckpt-migrate-in"
	err = v.mon.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdname}, pr)
	pr.Close()
	if err != nil {
		pw.Close()
		return nil, err
	}
	copied := make(chan error, 1)
	go func() {
		e := <-copyErr(pw, obj)
		pw.Close() // EOF for QEMU
		copied <- e
	}()
	if err := v.mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + fdname}, nil); err != nil {
		return nil, err // the caller's kill ends the copy (EPIPE)
	}
	m, err := b.waitMigration(ctx, v, "migration in")
	if cerr := <-copied; cerr != nil && err == nil {
		err = fmt.Errorf("state object: %w", cerr)
	}
	return m, err
}

// relaunch starts QEMU again, detached, waiting for an incoming migration.
func (b *Backend) relaunch(rec recipe) (*exec.Cmd, error) {
	argv := incomingArgv(rec.Launch.Argv)
	if st, err := os.Stat(rec.Socket); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(rec.Socket) // stale: its QEMU has quit
	}
	// After a kexec or a reboot /run is new: the socket's directory (the
	// default socket dir is /run/ckpt/qmp) must be made again.
	if err := os.MkdirAll(filepath.Dir(rec.Socket), 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(b.cfg.LogDir, filepath.Base(rec.ID)+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = rec.Launch.Dir, rec.Launch.Env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go cmd.Wait() // reap it whenever it ends
	return cmd, nil
}

// incomingArgv is argv without -incoming/-daemonize, plus -incoming defer.
func incomingArgv(argv []string) []string {
	out := []string{argv[0]}
	for i := 1; i < len(argv); i++ {
		switch argv[i] {
		case "-incoming", "--incoming":
			i++ // and its value
			continue
		case "-daemonize", "--daemonize":
			continue
		}
		out = append(out, argv[i])
	}
	return append(out, "-incoming", "defer")
}

// waitSocket connects to a relaunched QEMU's QMP socket.
func (b *Backend) waitSocket(ctx context.Context, socket string, cmd *exec.Cmd) (*vm, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.StartTimeout)
	defer cancel()
	for {
		v, err := b.monitor(ctx, socket)
		if err == nil {
			return v, nil
		}
		if !processAlive(cmd.Process.Pid) {
			return nil, fmt.Errorf("QEMU exited at start (see %s)", b.cfg.LogDir)
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
