package criu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// ended is a workload its Dump ends (see Dump): Thaw restores it from
// Img, Finish only removes what it left behind. It is recorded, before
// CRIU runs, in memory and as the rescue record of the engine's journal
// (see Revive).
type ended struct {
	Rec     recipe      `json:"recipe"`
	Tree    *treeRecipe `json:"tree,omitempty"` // set for a process tree
	Img     string      `json:"images"`
	Cleanup []string    `json:"cleanup,omitempty"` // staging dirs
}

type endedSet struct {
	mu sync.Mutex
	m  map[string]*ended
}

func (s *endedSet) put(id string, e *ended) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*ended{}
	}
	s.m[id] = e
}

func (s *endedSet) take(id string) *ended {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[id]
	delete(s.m, id)
	return e
}

func (e *ended) remove() {
	for _, d := range e.Cleanup {
		os.RemoveAll(d)
	}
}

// willEnd records, before CRIU runs, that w's dump is about to end it:
// in memory for Thaw, and in the engine's journal (dst's rescue record)
// for a recover after a crash.
func (r *Runtime) willEnd(w hypervisors.Workload, e *ended, dst hypervisors.ObjectSink) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := hypervisors.RecordRescue(dst, b); err != nil {
		return fmt.Errorf("journalling how to bring %s back: %w", w.ID, err)
	}
	r.ended.put(w.ID, e)
	return nil
}

// thawEnded brings back a workload its dump ended, from its images.
func (r *Runtime) thawEnded(ctx context.Context, w hypervisors.Workload, e *ended) error {
	r.log.Info("rollback: restoring the workload its dump ended", "workload", w.ID)
	if e.Tree != nil {
		return r.restoreTreeFrom(ctx, w, e.Tree, e.Img)
	}
	_, err := r.restoreFrom(ctx, w, e.Rec, e.Img, false)
	return err
}

var _ hypervisors.Reviver = (*Runtime)(nil)

// Revive implements hypervisors.Reviver for a suspend that crashed
// around a dump that ends its workload (see revive).
func (r *Runtime) Revive(ctx context.Context, w hypervisors.Workload, record json.RawMessage) error {
	var e ended
	if err := json.Unmarshal(record, &e); err != nil {
		return fmt.Errorf("rescue record of %s: %w", w.ID, err)
	}
	r.ended.take(w.ID)
	return r.revive(ctx, w, &e)
}

// revive undoes the freeze of a workload whose dump was to end it: one
// that still has its processes (CRIU failed, or had not begun) is thawed;
// one that is gone is restored from its images, which must be complete
// (CRIU writes inventory.img last). The staging is removed only after a
// success, so a failed attempt can be repeated.
func (r *Runtime) revive(ctx context.Context, w hypervisors.Workload, e *ended) error {
	cg, err := r.cgroup(ctx, w)
	if err != nil && !errors.Is(err, hypervisors.ErrNotFound) {
		return err
	}
	if err == nil {
		// A CRIU left by a killed ckpt may still be dumping it: whether
		// the workload lives on is known once it is done.
		if err := freezer.WaitUntraced(ctx, cg.PidList(), r.cfg.CancelGrace); err != nil {
			return err
		}
	}
	if err == nil && len(cg.PidList()) > 0 {
		restopped := r.restop(w.ID)
		if err := cg.ThawVerified(ctx, r.cfg.CancelGrace); err != nil {
			return err
		}
		e.remove()
		return restopped()
	}
	if _, err := os.Stat(filepath.Join(e.Img, "inventory.img")); err != nil {
		return fmt.Errorf("%s is gone and its dump did not complete (%v): nothing to bring it back from", w.ID, err)
	}
	if err := r.thawEnded(ctx, w, e); err != nil {
		return err
	}
	e.remove()
	return nil
}
