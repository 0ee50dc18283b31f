// Package libvirt suspends the domains of libvirt's qemu:///system with
// libvirt's own save and restore, so that libvirt keeps managing them:
// after the restore, virsh list shows each domain running under its name
// and UUID, and virsh shutdown, console and the rest work as before.
//
// It speaks libvirt's RPC protocol over libvirtd's unix socket
// (github.com/digitalocean/go-libvirt), so it needs no C library.
//
// Freeze pauses the domain (virDomainSuspend). Dump saves it with
// virDomainSaveFlags: libvirtd has QEMU migrate the paused domain into a
// save file (libvirt's header, the domain XML, QEMU's migration stream)
// and then ends the QEMU process; a persistent domain stays defined, shut
// off. The save file is written straight into a directory region; for a
// raw region (pmem) it is staged on tmpfs and copied into a region object,
// because libvirt rewrites the file's header at the end and so cannot
// write into a pipe. Since the save ends the domain, Dump records a rescue
// first, and a rollback (Thaw) restores the domain from its save file.
// Restore is virDomainRestoreFlags from the region's file.
//
// A domain marked autostart would be started afresh by libvirtd at boot,
// before ckpt restores it: its autostart is switched off for as long as it
// is suspended and put back by Restore (or by the rollback).
package libvirt

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// Name is the backend's registered name.
const Name = "libvirt"

// KindVM is the kind of a libvirt domain.
const KindVM = "vm"

// saveObject is the object holding the libvirt save file.
const saveObject = "save/domain.save"

// Config configures the backend; zero values mean defaults.
type Config struct {
	// Socket is the daemon's socket for qemu:///system (default the
	// monolithic libvirtd's /run/libvirt/libvirt-sock, else the modular
	// virtqemud's /run/libvirt/virtqemud-sock, whichever exists).
	Socket string `json:"socket"`
	// Domains are the domain names (path.Match globs) to suspend; empty
	// means every running domain.
	Domains []string `json:"domains"`
	// StagingDir holds save files staged for a raw region (default
	// /run/ckpt/libvirt, on tmpfs).
	StagingDir string `json:"staging_dir"`
	// QEMUStateDir is where libvirt keeps its QEMU domains' pid files
	// (default /run/libvirt/qemu).
	QEMUStateDir string `json:"qemu_state_dir"`
}

// defaultSockets are where libvirtd and virtqemud listen.
var defaultSockets = []string{"/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"}

func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	if c.Socket == "" {
		c.Socket = defaultSockets[0]
		for _, s := range defaultSockets {
			if _, err := os.Stat(s); err == nil {
				c.Socket = s
				break
			}
		}
	}
	def(&c.StagingDir, "/run/ckpt/libvirt")
	def(&c.QEMUStateDir, "/run/libvirt/qemu")
	return c
}

// Backend is the libvirt backend. Its methods are safe for concurrent use
// on different domains.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	l       *golibvirt.Libvirt
	version uint64 // libvirt's, major*1e6+minor*1e3+release

	mu    sync.Mutex
	state map[string]*domainState // by domain name

	closeOnce sync.Once
	closeErr  error
}

// domainState is what this process did to a domain between Freeze and
// Finish or Thaw.
type domainState struct {
	wasPaused bool   // paused before Freeze: stays paused
	froze     bool   // Freeze paused it
	autostart bool   // autostart was on, and Dump switched it off
	saved     string // the save file Dump wrote (for a rollback)
	staged    string // a staging copy to remove
}

var (
	_ hypervisors.Backend     = (*Backend)(nil)
	_ hypervisors.Preflighter = (*Backend)(nil)
	_ hypervisors.Reviver     = (*Backend)(nil)
	_ hypervisors.Stager      = (*Backend)(nil)
	_ io.Closer               = (*Backend)(nil)
)

func init() {
	hypervisors.Register(hypervisors.Registration{
		Name:   Name,
		Config: func() any { return &Config{} },
		Flags: []hypervisors.Flag{
			{Name: "libvirt-domain", Key: "domains", List: true, Usage: "libvirt domain name or glob to suspend (repeatable; default every running domain)"},
		},
		Init: func(ctx context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(ctx, *ic.Config.(*Config), ic.Logger)
		},
	})
}

// New connects to libvirtd, or returns an error wrapping
// hypervisors.ErrSkipBackend when no libvirtd runs here.
func New(_ context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := hypervisors.CheckGlobs("libvirt domains", cfg.Domains); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Socket); err != nil {
		return nil, fmt.Errorf("%w: libvirtd is not running (no socket %s)", hypervisors.ErrSkipBackend, cfg.Socket)
	}
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(cfg.Socket), dialers.WithLocalTimeout(10*time.Second)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		return nil, fmt.Errorf("%w: libvirtd at %s does not answer: %v", hypervisors.ErrSkipBackend, cfg.Socket, err)
	}
	v, err := l.ConnectGetLibVersion()
	if err != nil {
		l.Disconnect()
		return nil, fmt.Errorf("libvirt version: %w", err)
	}
	return &Backend{cfg: cfg, log: log, l: l, version: v, state: map[string]*domainState{}}, nil
}

// Name implements hypervisors.Backend.
func (b *Backend) Name() string { return Name }

// Close implements io.Closer: it ends the connection to libvirtd.
// It may be called more than once.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.l.Disconnect() })
	return b.closeErr
}

// Version is libvirt's version, e.g. "9.0.0".
func (b *Backend) Version() string {
	return fmt.Sprintf("%d.%d.%d", b.version/1000000, b.version/1000%1000, b.version%1000)
}

func (b *Backend) wanted(name string) bool {
	return len(b.cfg.Domains) == 0 || hypervisors.MatchGlobs(b.cfg.Domains, name)
}

// Discover implements hypervisors.Backend: the running (or paused)
// domains of qemu:///system.
func (b *Backend) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	doms, _, err := b.l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return nil, fmt.Errorf("listing libvirt domains: %w", err)
	}
	var ws []hypervisors.Workload
	for _, d := range doms {
		if !b.wanted(d.Name) {
			continue
		}
		_, _, mem, _, _, err := b.l.DomainGetInfo(d)
		if err != nil {
			continue // gone meanwhile
		}
		w := hypervisors.Workload{
			ID: d.Name, Kind: KindVM, Backend: Name, MemoryBytes: int64(mem) * 1024,
			Attrs: map[string]string{"uuid": uuidString(d.UUID), "manager": "libvirt"},
		}
		if pid, err := b.qemuPID(d.Name); err == nil {
			w.PID = pid
		}
		if p, err := b.l.DomainIsPersistent(d); err == nil {
			w.Attrs["persistent"] = strconv.FormatBool(p == 1)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func uuidString(u golibvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// qemuPID reads libvirt's pid file of the domain's QEMU.
func (b *Backend) qemuPID(name string) (int, error) {
	s, err := os.ReadFile(filepath.Join(b.cfg.QEMUStateDir, name+".pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(s)))
}

func (b *Backend) domain(w hypervisors.Workload) (golibvirt.Domain, error) {
	d, err := b.l.DomainLookupByName(w.ID)
	if err != nil {
		if isNoDomain(err) {
			return d, fmt.Errorf("%w: libvirt domain %s", hypervisors.ErrNotFound, w.ID)
		}
		return d, fmt.Errorf("libvirt domain %s: %w", w.ID, err)
	}
	return d, nil
}

func isNoDomain(err error) bool { return golibvirt.IsNotFound(err) }

func (b *Backend) stateOf(name string) *domainState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state[name]
	if s == nil {
		s = &domainState{}
		b.state[name] = s
	}
	return s
}

func (b *Backend) forget(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.state, name)
}

// domState is the domain's libvirt state (DomainRunning, DomainPaused…).
func (b *Backend) domState(d golibvirt.Domain) (golibvirt.DomainState, error) {
	st, _, err := b.l.DomainGetState(d, 0)
	return golibvirt.DomainState(st), err
}

// Preflight implements hypervisors.Preflighter.
func (b *Backend) Preflight(ctx context.Context, w hypervisors.Workload) error {
	d, err := b.domain(w)
	if err != nil {
		return err
	}
	st, err := b.domState(d)
	if err != nil {
		return err
	}
	if st != golibvirt.DomainRunning && st != golibvirt.DomainPaused {
		return fmt.Errorf("%w: libvirt domain %s is %s, not running", hypervisors.ErrNotCheckpointable, w.ID, stateName(st))
	}
	if has, err := b.l.DomainHasManagedSaveImage(d, 0); err == nil && has == 1 {
		return fmt.Errorf("%w: libvirt domain %s has a managed save image, which its next start would load instead of ckpt's save; remove it first (virsh managedsave-remove %s)",
			hypervisors.ErrNotCheckpointable, w.ID, w.ID)
	}
	return nil
}

func stateName(st golibvirt.DomainState) string {
	switch st {
	case golibvirt.DomainRunning:
		return "running"
	case golibvirt.DomainPaused:
		return "paused"
	case golibvirt.DomainShutoff:
		return "shut off"
	case golibvirt.DomainCrashed:
		return "crashed"
	case golibvirt.DomainPmsuspended:
		return "suspended by the guest"
	}
	return fmt.Sprintf("in state %d", st)
}

// Freeze implements hypervisors.Backend: pause the vCPUs.
func (b *Backend) Freeze(ctx context.Context, w hypervisors.Workload) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d, err := b.domain(w)
	if err != nil {
		return err
	}
	st, err := b.domState(d)
	if err != nil {
		return err
	}
	s := b.stateOf(w.ID)
	switch st {
	case golibvirt.DomainPaused:
		if !s.froze {
			s.wasPaused = true
		}
		return nil
	case golibvirt.DomainRunning:
		if err := b.l.DomainSuspend(d); err != nil {
			return fmt.Errorf("pausing libvirt domain %s: %w", w.ID, err)
		}
		s.froze = true
		return nil
	}
	return fmt.Errorf("%w: libvirt domain %s is %s", hypervisors.ErrNotCheckpointable, w.ID, stateName(st))
}

// Thaw implements hypervisors.Backend. A domain that is still active is
// resumed (unless it was paused before Freeze); one that Dump saved (and
// so ended) is restored from its save file.
func (b *Backend) Thaw(ctx context.Context, w hypervisors.Workload) error {
	s := b.stateOf(w.ID)
	d, err := b.domain(w)
	if err != nil && !errors.Is(err, hypervisors.ErrNotFound) {
		return err
	}
	active := false
	if err == nil {
		// A save or restore that libvirtd still runs (for a ckpt killed
		// meanwhile, or cut short) ends in its own time: act on the state
		// it leaves.
		st, err := b.settledState(ctx, d)
		if err != nil {
			return err
		}
		active = st == golibvirt.DomainRunning || st == golibvirt.DomainPaused
		if active && st == golibvirt.DomainPaused && !s.wasPaused {
			if err := b.l.DomainResume(d); err != nil {
				return fmt.Errorf("resuming libvirt domain %s: %w", w.ID, err)
			}
		}
	}
	if !active {
		if s.saved == "" {
			// Nothing of this process's to thaw or bring back: for the
			// caller the original is gone (a resume restores it from the
			// region).
			b.forget(w.ID)
			return fmt.Errorf("%w: libvirt domain %s is not running, and this process saved none of it", hypervisors.ErrNotFound, w.ID)
		}
		if err := b.restoreFile(ctx, w.ID, s.saved, s.wasPaused); err != nil {
			return err
		}
	}
	if s.autostart {
		if err := b.setAutostart(w.ID, true); err != nil {
			return err
		}
	}
	if s.staged != "" {
		os.Remove(s.staged)
	}
	b.forget(w.ID)
	return nil
}

// settledState is the domain's state once no save, restore or dump of
// libvirtd's holds it paused (within two minutes).
func (b *Backend) settledState(ctx context.Context, d golibvirt.Domain) (golibvirt.DomainState, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	for {
		st, reason, err := b.l.DomainGetState(d, 0)
		if err != nil {
			if golibvirt.IsNotFound(err) {
				return golibvirt.DomainShutoff, nil // a transient domain, gone
			}
			return 0, err
		}
		busy := golibvirt.DomainState(st) == golibvirt.DomainPaused && slices.Contains([]golibvirt.DomainPausedReason{
			golibvirt.DomainPausedMigration, golibvirt.DomainPausedSave, golibvirt.DomainPausedDump, golibvirt.DomainPausedStartingUp,
		}, golibvirt.DomainPausedReason(reason))
		if !busy {
			return golibvirt.DomainState(st), nil
		}
		select {
		case <-ctx.Done():
			return golibvirt.DomainState(st), nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (b *Backend) setAutostart(name string, on bool) error {
	d, err := b.l.DomainLookupByName(name)
	if err != nil {
		return fmt.Errorf("libvirt domain %s: %w", name, err)
	}
	v := int32(0)
	if on {
		v = 1
	}
	if err := b.l.DomainSetAutostart(d, v); err != nil {
		return fmt.Errorf("setting autostart of libvirt domain %s to %v: %w", name, on, err)
	}
	return nil
}

// recipe is what Restore needs.
type recipe struct {
	Name       string `json:"name"`
	UUID       string `json:"uuid"`
	Object     string `json:"object"`
	Bytes      int64  `json:"bytes"`
	Paused     bool   `json:"paused,omitempty"`    // paused before the suspend: restored paused
	Autostart  bool   `json:"autostart,omitempty"` // put back after the restore
	Persistent bool   `json:"persistent"`
	Libvirt    string `json:"libvirt"`
	// SaveMS is how long libvirt's save job itself took (its completed
	// job's time_elapsed: QEMU's migration into the file); the rest of
	// the save is libvirt ending the QEMU process.
	SaveMS uint64 `json:"save_ms,omitempty"`
}

// rescue is the record Dump journals before the save ends the domain.
type rescue struct {
	Name      string `json:"name"`
	File      string `json:"file"`
	Paused    bool   `json:"paused,omitempty"`
	Autostart bool   `json:"autostart,omitempty"`
}

// Dump implements hypervisors.Backend: save the paused domain into dst.
// The save ends the domain's QEMU; Thaw brings it back from the file.
func (b *Backend) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	d, err := b.domain(w)
	if err != nil {
		return nil, err
	}
	st, err := b.domState(d)
	if err != nil {
		return nil, err
	}
	if st != golibvirt.DomainPaused {
		return nil, fmt.Errorf("libvirt domain %s is %s, not frozen", w.ID, stateName(st))
	}
	s := b.stateOf(w.ID)
	persistent, err := b.l.DomainIsPersistent(d)
	if err != nil {
		return nil, err
	}
	autostart, err := b.l.DomainGetAutostart(d)
	if err != nil {
		return nil, err
	}
	file, direct := "", false
	if ds, ok := dst.(hypervisors.DirectSink); ok {
		if dir, err := ds.Dir(path.Dir(saveObject)); err == nil {
			file, direct = filepath.Join(dir, path.Base(saveObject)), true
		}
	}
	if !direct {
		if err := os.MkdirAll(b.cfg.StagingDir, 0o700); err != nil {
			return nil, err
		}
		file = filepath.Join(b.cfg.StagingDir, hex.EncodeToString(d.UUID[:])+".save")
		os.Remove(file)
	}
	// The save ends the domain: say how to bring it back before it runs.
	resc, _ := json.Marshal(rescue{Name: w.ID, File: file, Paused: s.wasPaused, Autostart: autostart == 1})
	if err := hypervisors.RecordRescue(dst, resc); err != nil {
		return nil, err
	}
	if autostart == 1 {
		if err := b.setAutostart(w.ID, false); err != nil {
			return nil, err
		}
		s.autostart = true
	}
	if err := b.save(ctx, d, w.ID, file); err != nil {
		os.Remove(file)
		return nil, err
	}
	s.saved = file
	if !direct {
		s.staged = file
	}
	saveMS := b.completedJobMS(d)
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if direct {
		if err := dst.(hypervisors.DirectSink).Adopt(saveObject); err != nil {
			return nil, err
		}
	} else if err := copyInto(dst, saveObject, file, fi.Size()); err != nil {
		return nil, err
	}
	return json.Marshal(recipe{
		Name: w.ID, UUID: uuidString(d.UUID), Object: saveObject, Bytes: fi.Size(),
		Paused: s.wasPaused, Autostart: s.autostart, Persistent: persistent == 1, Libvirt: b.Version(), SaveMS: saveMS,
	})
}

// completedJobMS is the time_elapsed of the domain's last completed job
// (0 where libvirt keeps none, as for a transient domain, gone).
func (b *Backend) completedJobMS(d golibvirt.Domain) uint64 {
	_, params, err := b.l.DomainGetJobStats(d, golibvirt.DomainJobStatsCompleted)
	if err != nil {
		return 0
	}
	for _, p := range params {
		if v, ok := p.Value.I.(uint64); ok && p.Field == "time_elapsed" {
			return v
		}
	}
	return 0
}

// save runs virDomainSaveFlags; when ctx ends first the save job is
// aborted, which leaves the domain running (paused) in its QEMU.
func (b *Backend) save(ctx context.Context, d golibvirt.Domain, name, file string) error {
	done := make(chan error, 1)
	go func() { done <- b.l.DomainSaveFlags(d, file, nil, 0) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("saving libvirt domain %s: %w", name, err)
		}
		return nil
	case <-ctx.Done():
	}
	if err := b.l.DomainAbortJob(d); err != nil {
		b.log.Warn("aborting the save", "domain", name, "err", err)
	}
	err := <-done
	if err == nil {
		return nil // it finished before the abort: the save did happen
	}
	return fmt.Errorf("saving libvirt domain %s: %w (%v)", name, ctx.Err(), err)
}

func copyInto(dst hypervisors.ObjectSink, name, file string, size int64) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	obj, err := dst.Create(name, size)
	if err != nil {
		return err
	}
	if _, err := io.Copy(obj, f); err != nil {
		obj.Close()
		return fmt.Errorf("storing %s: %w", name, err)
	}
	return obj.Close()
}

// Finish implements hypervisors.Backend. The save already ended the
// domain's QEMU; the staged copy is no longer needed.
func (b *Backend) Finish(ctx context.Context, w hypervisors.Workload) error {
	s := b.stateOf(w.ID)
	if s.staged != "" {
		os.Remove(s.staged)
	}
	b.forget(w.ID)
	d, err := b.domain(w)
	if errors.Is(err, hypervisors.ErrNotFound) {
		return nil // a transient domain: gone with its QEMU
	}
	if err != nil {
		return err
	}
	if st, err := b.domState(d); err == nil && (st == golibvirt.DomainRunning || st == golibvirt.DomainPaused) {
		return fmt.Errorf("libvirt domain %s runs again after its save: someone started it", w.ID)
	}
	return nil
}

// Restore implements hypervisors.Backend: virDomainRestoreFlags from the
// region's save file (in place for a directory region, else staged).
func (b *Backend) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("libvirt recipe of %s: %w", w.ID, err)
	}
	if rec.Name == "" || rec.Object != saveObject {
		return fmt.Errorf("libvirt recipe of %s: no domain or save object", w.ID)
	}
	if d, err := b.l.DomainLookupByName(rec.Name); err == nil {
		if st, err := b.domState(d); err == nil && (st == golibvirt.DomainRunning || st == golibvirt.DomainPaused) {
			return fmt.Errorf("libvirt domain %s is already running: not restoring over it", rec.Name)
		}
	}
	file := ""
	if ds, ok := src.(hypervisors.DirectSource); ok {
		if dir, err := ds.Dir(path.Dir(saveObject)); err == nil {
			file = filepath.Join(dir, path.Base(saveObject))
		}
	}
	if file == "" {
		staged, err := b.stageFrom(src, rec)
		if err != nil {
			return err
		}
		defer os.Remove(staged)
		file = staged
	}
	if err := b.restoreFile(ctx, rec.Name, file, rec.Paused); err != nil {
		return err
	}
	if rec.Autostart {
		return b.setAutostart(rec.Name, true)
	}
	return nil
}

// stageFrom copies the save object out of the region onto tmpfs; the
// region reports corruption at EOF.
func (b *Backend) stageFrom(src hypervisors.ObjectSource, rec recipe) (string, error) {
	if err := os.MkdirAll(b.cfg.StagingDir, 0o700); err != nil {
		return "", err
	}
	r, err := src.Open(rec.Object)
	if err != nil {
		return "", err
	}
	defer r.Close()
	f, err := os.CreateTemp(b.cfg.StagingDir, "restore-*.save")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", fmt.Errorf("reading the save of %s from the region: %w", rec.Name, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// restoreFile restores a domain from a save file, running unless paused.
func (b *Backend) restoreFile(ctx context.Context, name, file string, paused bool) error {
	flags := golibvirt.DomainSaveRunning
	if paused {
		flags = golibvirt.DomainSavePaused
	}
	done := make(chan error, 1)
	go func() {
		defer hypervisors.DomainStarting()()
		done <- b.l.DomainRestoreFlags(file, nil, uint32(flags))
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("restoring libvirt domain %s from %s: %w", name, file, err)
		}
		return nil
	case <-ctx.Done():
		// libvirt cannot abort a restore halfway; wait for it, so that the
		// caller does not act on a domain being restored.
		err := <-done
		if err != nil {
			return fmt.Errorf("restoring libvirt domain %s: %w (%v)", name, ctx.Err(), err)
		}
		return nil
	}
}

// Revive implements hypervisors.Reviver: after a crash, a domain still
// active is resumed; one whose save ended it is restored from the file.
func (b *Backend) Revive(ctx context.Context, w hypervisors.Workload, raw json.RawMessage) error {
	var r rescue
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("libvirt rescue of %s: %w", w.ID, err)
	}
	s := b.stateOf(w.ID)
	s.wasPaused, s.autostart = r.Paused, r.Autostart
	if _, err := os.Stat(r.File); err == nil {
		s.saved = r.File
		if strings.HasPrefix(r.File, b.cfg.StagingDir+"/") {
			s.staged = r.File
		}
	}
	return b.Thaw(ctx, w)
}

// StagingBytes implements hypervisors.Stager: for a raw region the save
// file is staged on tmpfs, as large as the domain's used memory.
func (b *Backend) StagingBytes(_ hypervisors.Workload, estimate int64, direct bool) int64 {
	if direct {
		return 0
	}
	return estimate
}
