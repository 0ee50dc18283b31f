package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// Pre-copy: a VM whose RAM is copied (not left in place) is migrated
// while it still runs. PreDump starts a mapped-ram migration into the
// region and returns once QEMU has sent all of the VM's RAM once. QEMU
// (10.0) then completes a mapped-ram migration by itself: it stops the VM
// and sends only the pages dirtied during that pass, and the devices. So
// the VM is stopped at the end of its pre-copy, shortly before the
// engine's freeze (the engine runs the VMs' pre-copies together, last),
// and for the copy of its last dirty pages only; Freeze, Dump and Thaw
// take it from there. The freeze-to-commit time of every workload loses
// the bulk of the VMs' RAM.
//
// Only mapped-ram pre-copies: a stream (QEMU < 9, a raw region) would
// grow by every page the guest dirties again, for as long as the suspend
// takes, where a mapped-ram file is rewritten in place.
//
// A suspend rolled back, or a ckpt that crashed, after PreDump calls Thaw
// (the engine journals a pre-copy like a freeze; see
// hypervisors.LivePreDumper), which lets a migration still running end
// (its pass; cancelled only after migrationGrace), drops its file, puts
// the settings back and continues the VM that QEMU stopped.

var _ hypervisors.LivePreDumper = (*Backend)(nil)

// PreDumpLeavesWork implements hypervisors.LivePreDumper.
func (b *Backend) PreDumpLeavesWork() {}

// PreDump implements hypervisors.PreDumper (see above).
func (b *Backend) PreDump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.out != nil {
		return fmt.Errorf("pre-copy of %s: one is under way already", w.ID)
	}
	var st struct {
		Running bool `json:"running"`
	}
	if err := v.mon.Execute(ctx, "query-status", nil, &st); err != nil {
		return err
	}
	if !st.Running {
		return fmt.Errorf("%w: %s is paused: its dump copies nothing twice", hypervisors.ErrNotSupported, w.ID)
	}
	rec, ds, _, err := b.recipeFor(ctx, v, w, dst)
	switch {
	case err != nil:
		return err
	case rec.CPR != nil:
		return fmt.Errorf("%w: %s keeps its RAM in place", hypervisors.ErrNotSupported, w.ID)
	case rec.Mapped == nil:
		return fmt.Errorf("%w: pre-copy of %s needs mapped-ram (QEMU >= 9 and a directory or fs region); a stream would grow by every page dirtied again", hypervisors.ErrNotSupported, w.ID)
	}
	rec.Running = true
	if err := b.raiseBandwidth(ctx, v); err != nil {
		return err
	}
	o, err := b.startMapped(ctx, v, ds, rec.Mapped.Channels)
	if err != nil {
		return fmt.Errorf("pre-copy of %s: %w", w.ID, err)
	}
	o.rec = rec
	v.out, v.wasRunning = o, true
	m, err := b.firstPass(ctx, v)
	if err != nil {
		b.abortPreCopy(ctx, v)
		return fmt.Errorf("pre-copy of %s: %w", w.ID, err)
	}
	if m.Status == "completed" {
		// Done already: adopt the file now (it is hashed), not in the
		// freeze. Dump returns the recipe; a rollback discards it with
		// the region's other objects.
		done, err := o.finish(ctx)
		if err != nil {
			v.out = nil
			return fmt.Errorf("pre-copy of %s: %w", w.ID, err)
		}
		o.finish = func(context.Context) (*Migration, error) { return done, nil }
		o.abort = func(context.Context) {}
	}
	b.log.Info("pre-copy: all RAM sent once", "workload", w.ID,
		"after", time.Since(o.start).Round(time.Millisecond), "status", m.Status)
	return nil
}

// firstPass waits until the migration ends (QEMU 10 completes a
// mapped-ram one after its first pass), or, should QEMU go on iterating,
// until it has sent the VM's RAM maxPasses times: Freeze then stops the
// VM and Dump waits for the rest.
func (b *Backend) firstPass(ctx context.Context, v *vm) (*Migration, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var m Migration
		if err := v.mon.Execute(ctx, "query-migrate", nil, &m); err != nil {
			return nil, err
		}
		switch {
		case m.Status == "failed" || m.Status == "cancelled":
			return &m, fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc)
		case m.Status == "completed" || m.RAM != nil && m.RAM.DirtySyncCount > maxPasses:
			return &m, nil
		}
		select {
		case <-ctx.Done():
			return &m, ctx.Err()
		case <-tick.C:
		}
	}
}

// maxPasses bounds the passes over RAM a pre-copy waits for.
const maxPasses = 3

// endPreCopy is Dump for a VM whose pre-copy ran: it waits for the
// migration's end (QEMU sends the last dirty pages with the VM stopped)
// and adopts its file.
func (b *Backend) endPreCopy(ctx context.Context, v *vm, w hypervisors.Workload) (json.RawMessage, error) {
	o := v.out
	v.out = nil
	m, err := o.finish(ctx)
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", w.ID, err)
	}
	rec := o.rec
	rec.Stats = m
	b.log.Debug("dumped VM after its pre-copy", "workload", w.ID, "stats", m)
	return json.Marshal(rec)
}

// abortPreCopy cancels a pre-copy (if it still runs) and drops its file.
func (b *Backend) abortPreCopy(ctx context.Context, v *vm) {
	if v.out != nil {
		v.out.abort(context.WithoutCancel(ctx))
		v.out = nil
	}
}
