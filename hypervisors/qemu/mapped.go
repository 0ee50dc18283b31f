package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// mappedObject is the object of a mapped-ram migration: a file laid out
// like guest RAM (zero pages are holes), written by several multifd
// channels in parallel.
const mappedObject = "ram/state"

// mapped records how a state was saved with mapped-ram.
type mapped struct {
	Channels int `json:"channels"`
}

// channels is the multifd channel count for this dump, 0 for the stream.
func (b *Backend) channels(v *vm) int {
	ver := v.mon.Version.QEMU
	if b.cfg.MultifdChannels < 0 || ver.Major < 9 { // mapped-ram came in QEMU 9.0
		return 0
	}
	if b.cfg.MultifdChannels > 0 {
		return b.cfg.MultifdChannels
	}
	return min(4, runtime.NumCPU())
}

func capabilities(on bool, names ...string) map[string]any {
	var cs []map[string]any
	for _, n := range names {
		cs = append(cs, map[string]any{"capability": n, "state": on})
	}
	return map[string]any{"capabilities": cs}
}

// setMapped turns mapped-ram and multifd on (with n channels) or off.
func setMapped(ctx context.Context, v *vm, n int) error {
	if err := v.mon.Execute(ctx, "migrate-set-capabilities", capabilities(n > 0, "mapped-ram", "multifd"), nil); err != nil {
		return err
	}
	if n > 0 {
		return v.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"multifd-channels": n}, nil)
	}
	return nil
}

// migrateMapped saves the VM into a file in a directory region with
// mapped-ram and n multifd channels, and adopts it as mappedObject.
func (b *Backend) migrateMapped(ctx context.Context, v *vm, ds hypervisors.DirectSink, n int) (*Migration, error) {
	o, err := b.startMapped(ctx, v, ds, n)
	if err != nil {
		return nil, err
	}
	return o.finish(ctx)
}

// outgoing is a mapped-ram migration under way: finish waits for its end
// and adopts its file, abort cancels it and drops the file. Either puts
// the capabilities back, so the VM's later migrations (by libvirt, say)
// are not changed behind its back.
type outgoing struct {
	rec    recipe // for a pre-copy: what its Dump returns
	start  time.Time
	finish func(ctx context.Context) (*Migration, error)
	abort  func(ctx context.Context)
}

// startMapped begins the migration of the VM into the file mappedObject
// of ds.
func (b *Backend) startMapped(ctx context.Context, v *vm, ds hypervisors.DirectSink, n int) (*outgoing, error) {
	dir, err := ds.Dir(filepath.Dir(mappedObject))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, filepath.Base(mappedObject))
	unset := func() {
		bg := context.WithoutCancel(ctx)
		untilSettled(bg, func() error { return setMapped(bg, v, 0) })
	}
	if err := setMapped(ctx, v, n); err != nil {
		unset()
		return nil, err
	}
	o := &outgoing{start: time.Now()}
	if err := v.mon.Execute(ctx, "migrate", map[string]any{"uri": "file:" + path}, nil); err != nil {
		b.endMigration(ctx, v) // a "migrate" whose answer was cut short may have started
		os.Remove(path)
		unset()
		return nil, err
	}
	o.finish = func(ctx context.Context) (*Migration, error) {
		defer unset()
		m, err := b.waitMigration(ctx, v, "migration out")
		if err != nil {
			b.endMigration(ctx, v) // QEMU closes the file
			os.Remove(path)
			return m, err
		}
		m.WallMS = time.Since(o.start).Milliseconds()
		if err := ds.Adopt(mappedObject); err != nil {
			return m, fmt.Errorf("adopting %s: %w", mappedObject, err)
		}
		return m, nil
	}
	o.abort = func(ctx context.Context) {
		// Not migrate_cancel at once: QEMU 10.0 can crash when a
		// mapped-ram migration is cancelled just after it began (see
		// endMigration); it ends by itself after a pass, the VM stopped
		// (Thaw continues it).
		b.endMigration(ctx, v)
		os.Remove(path)
		unset()
	}
	return o, nil
}

// migrateInMapped loads a mapped-ram state file in place.
func (b *Backend) migrateInMapped(ctx context.Context, v *vm, src hypervisors.DirectSource, n int) (*Migration, error) {
	dir, err := src.Dir(filepath.Dir(mappedObject))
	if err != nil {
		return nil, err
	}
	if err := setMapped(ctx, v, n); err != nil {
		return nil, err
	}
	if err := v.mon.Execute(ctx, "migrate-incoming", map[string]any{"uri": "file:" + filepath.Join(dir, filepath.Base(mappedObject))}, nil); err != nil {
		return nil, err
	}
	m, err := b.waitMigration(ctx, v, "migration in")
	if err == nil {
		// Leave the restored VM with the capabilities it had before.
		err = untilSettled(ctx, func() error { return setMapped(ctx, v, 0) })
	}
	return m, err
}
