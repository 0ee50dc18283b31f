package hypervisors

import (
	"context"
	"encoding/json"
	"io"
)

// Workload is one suspendable unit: a container, a process tree, a VM.
type Workload struct {
	ID          string            `json:"id"`      // unique within its backend
	Kind        string            `json:"kind"`    // "container", "process-tree", "vm"
	Backend     string            `json:"backend"` // the registering backend's name
	PID         int               `json:"pid,omitempty"`
	MemoryBytes int64             `json:"memory_bytes"` // what a dump will write, roughly
	Attrs       map[string]string `json:"attrs,omitempty"`
}

// ObjectSink receives a workload's state as named objects. Names are
// relative to the workload; the engine places them in the region.
type ObjectSink interface {
	// Create starts an object; sizeHint is 0 when unknown. The writer must
	// be closed; a failed object is dropped by the engine's rollback.
	Create(name string, sizeHint int64) (io.WriteCloser, error)
}

// ObjectSource gives back the objects a Dump wrote.
type ObjectSource interface {
	Names() []string
	// Open returns a reader that reports corruption as an error at EOF.
	Open(name string) (io.ReadCloser, error)
}

// Backend suspends and resumes one family of workloads. Methods take the
// caller's context and must stop (and leave the workload as it was) when
// it is done.
type Backend interface {
	Name() string
	// Discover lists the workloads this backend can see now.
	Discover(ctx context.Context) ([]Workload, error)
	// Freeze stops the workload cheaply and reversibly.
	Freeze(ctx context.Context, w Workload) error
	// Thaw undoes Freeze; it is also the rollback after a Dump. Rollback
	// thaws before it discards what Dump wrote: a backend whose Dump had
	// to end the workload brings it back from those objects.
	Thaw(ctx context.Context, w Workload) error
	// Dump writes the frozen workload's state into dst and returns the
	// recipe Restore needs. The workload stays frozen and, where the
	// backend can, alive (see Thaw).
	Dump(ctx context.Context, w Workload, dst ObjectSink) (json.RawMessage, error)
	// Finish ends the original workload once its checkpoint is committed.
	Finish(ctx context.Context, w Workload) error
	// Restore recreates the workload from a recipe and its objects, running
	// and managed by its runtime as before.
	Restore(ctx context.Context, w Workload, recipe json.RawMessage, src ObjectSource) error
}

// Preflighter says, before anything is frozen, whether a workload can be
// checkpointed; the error wraps ErrNotCheckpointable and says why.
type Preflighter interface {
	Preflight(ctx context.Context, w Workload) error
}

// PreDumper copies most of a running workload's memory ahead of the
// freeze; the following Dump writes only what changed since.
type PreDumper interface {
	PreDump(ctx context.Context, w Workload, dst ObjectSink) error
}

// LazyRestorer restores a workload that runs before all of its memory is
// back: its pages are served from src as it touches them, and the rest
// are copied in behind it. RestoreLazy returns once the workload runs;
// wait returns once every page is in (nil), or once serving them failed,
// in which case the workload has been killed, never left running on
// pages it did not get back, and src must be kept for another restore.
// src must stay readable until wait returns. A workload the backend
// cannot restore lazily gets an error wrapping ErrNotSupported, before
// anything is done.
type LazyRestorer interface {
	RestoreLazy(ctx context.Context, w Workload, recipe json.RawMessage, src ObjectSource) (wait func() error, err error)
}

// LivePreDumper is a PreDumper whose PreDump leaves work under way in
// the running workload until its Dump (a VM's migration): a suspend that
// ends before the Dump must Thaw it, and the engine journals it like a
// freeze before PreDump begins, so that a recover does too.
type LivePreDumper interface {
	PreDumper
	PreDumpLeavesWork()
}

// SizeEstimator predicts a Dump's bytes better than Workload.MemoryBytes.
type SizeEstimator interface {
	EstimateSize(ctx context.Context, w Workload) (int64, error)
}

// DirectSink is an ObjectSink whose objects can be written in place as
// files (a directory region), so a tool that writes files (CRIU) needs no
// copy. Dir fails (memregion.ErrNoDirectAccess) where that is impossible;
// callers then fall back to Create.
type DirectSink interface {
	ObjectSink
	// Dir returns a directory for objects named sub/<file>.
	Dir(sub string) (string, error)
	// Adopt makes a file written under Dir the object name.
	Adopt(name string) error
}

// DirectSource is an ObjectSource whose verified objects can be read in
// place as files.
type DirectSource interface {
	ObjectSource
	Dir(sub string) (string, error)
}

// BootPreparer is a backend that must act early in the boot of the new
// kernel, before the network and the usual services start, for a workload
// of the committed checkpoint: keep its TCP peers from being answered with
// a reset, keep the PIDs its processes need free, hold back a service
// manager that would start the workload afresh. It is called before the
// region is verified, so it must only prepare, never restore, and be
// harmless when repeated; Restore undoes what it set up.
type BootPreparer interface {
	PrepareBoot(ctx context.Context, w Workload, recipe json.RawMessage) error
}

// Rescuer is implemented by the engine's sinks. A Dump that is about to
// end its workload (CRIU's --tcp-established) first records, with
// RecordRescue, how to bring the workload back from what the dump
// writes: the engine journals it on disk, so that a suspend killed at any
// later moment can still be undone (Reviver). The record is the
// backend's own JSON.
type Rescuer interface {
	RecordRescue(record json.RawMessage) error
}

// RecordRescue calls dst's RecordRescue where dst is a Rescuer.
func RecordRescue(dst ObjectSink, record json.RawMessage) error {
	if r, ok := dst.(Rescuer); ok {
		return r.RecordRescue(record)
	}
	return nil
}

// Reviver undoes, after a crash, a freeze whose Dump recorded a rescue:
// a workload that still exists is thawed; one the dump ended is restored
// from the record. It must be harmless when repeated.
type Reviver interface {
	Revive(ctx context.Context, w Workload, record json.RawMessage) error
}

// Stager is a backend that needs memory outside the region during a
// suspend or a resume: it stages a workload's state in RAM (tmpfs) where
// the region cannot take files in place (direct is false). The plan adds
// it up and checks it against the host's available memory.
type Stager interface {
	StagingBytes(w Workload, estimate int64, direct bool) int64
}
