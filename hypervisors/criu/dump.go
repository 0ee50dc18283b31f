package criu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/stats"
	"github.com/ckpt-dev/ckpt/hypervisors"
)

// recipe is what Restore needs, stored opaque in the manifest.
type recipe struct {
	Runtime string   `json:"runtime"` // "runc"
	Root    string   `json:"root"`
	ID      string   `json:"id"`
	Bundle  string   `json:"bundle"`
	Images  []string `json:"images"`           // object names, relative to the workload
	Parent  []string `json:"parent,omitempty"` // pre-dump object names the images build on
	TCP     bool     `json:"tcp_established,omitempty"`
	// Locks are the connections in the host's network namespace: a new
	// kernel must drop their packets until the restore (see PrepareBoot).
	Locks []tcpConn `json:"net_locks,omitempty"`
	Needs criuNeeds `json:"criu,omitempty"` // what CRIU was told (file locks, …)
	// Stopped are the tasks (namespace pids) that were stopped: restored
	// stopped (see stopped.go).
	Stopped []int      `json:"stopped,omitempty"`
	Stats   *DumpStats `json:"stats,omitempty"`
}

// DumpStats are CRIU's own numbers for one dump.
type DumpStats struct {
	FrozenMicros   uint32 `json:"frozen_us"`
	MemdumpMicros  uint32 `json:"memdump_us"`
	MemwriteMicros uint32 `json:"memwrite_us"`
	PagesWritten   uint64 `json:"pages_written"`
	ImageBytes     int64  `json:"image_bytes"`
	CRIUMicros     int64  `json:"criu_us"`  // wall time of runc checkpoint
	StoreMicros    int64  `json:"store_us"` // wall time of streaming images into the region
}

// RestoreStats are CRIU's own account of a restore (stats-restore, which
// CRIU writes into its work directory), next to ckpt's wall time.
type RestoreStats struct {
	ForkingMicros uint32 `json:"forking_us"`
	RestoreMicros uint32 `json:"restore_us"`
	PagesRestored uint64 `json:"pages_restored"`
	WallMicros    int64  `json:"wall_us"` // the whole restore call (runc restore, or criu swrk)
}

// LastRestore is CRIU's account of the last restore of workload id by
// this Runtime (nil before one, or where CRIU wrote none).
func (r *Runtime) LastRestore(id string) *RestoreStats {
	if v, ok := r.restores.Load(id); ok {
		return v.(*RestoreStats)
	}
	return nil
}

// noteRestore reads stats-restore from CRIU's work directory, keeps it
// for LastRestore and logs it.
func (r *Runtime) noteRestore(id, work string, wall time.Duration) {
	r.restores.Delete(id)
	// go-criu slices the file without checking its length: a short one
	// (a full work directory) must not take the restore down.
	defer func() {
		if p := recover(); p != nil {
			r.log.Warn("CRIU's restore statistics are unreadable", "workload", id, "err", p)
		}
	}()
	f, err := os.Open(work)
	if err != nil {
		return
	}
	defer f.Close()
	st, err := stats.CriuGetRestoreStats(f)
	if err != nil {
		return
	}
	rs := &RestoreStats{ForkingMicros: st.GetForkingTime(), RestoreMicros: st.GetRestoreTime(), PagesRestored: st.GetPagesRestored(), WallMicros: wall.Microseconds()}
	r.restores.Store(id, rs)
	r.log.Info("restored", "workload", id, "criu_forking", time.Duration(rs.ForkingMicros)*time.Microsecond,
		"criu_restore", time.Duration(rs.RestoreMicros)*time.Microsecond, "pages", rs.PagesRestored, "wall", wall.Round(time.Millisecond))
}

const imagePrefix = "images/"

// Dump checkpoints a frozen container and writes the images into dst.
//
// Normally that is runc checkpoint --leave-running: the container stays
// frozen and alive, rollback is a thaw and Finish ends it. A container
// holding established TCP connections is dumped with --tcp-established
// instead and ended by the dump itself: its sockets are closed while still
// in repair mode, so the peers see nothing (ending it later would send them
// a FIN or RST), and CRIU keeps those connections locked with iptables until
// the restore. Rollback then means restoring it from the images Dump wrote,
// which Thaw does; the images must outlive the Thaw.
func (r *Runtime) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	if isTree(w) {
		return r.dumpTree(ctx, w, dst)
	}
	st, err := r.state(ctx, w.ID)
	if err != nil {
		return nil, err
	}
	conns, err := r.connections(ctx, w)
	if err != nil {
		return nil, err
	}
	dir, err := r.stage(w.ID, "dump")
	if err != nil {
		return nil, err
	}
	keep := false // the staging dir outlives Dump (ended container, raw region)
	defer func() {
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	img, work := filepath.Join(dir, "images"), filepath.Join(dir, "work")
	img, direct := imageDir(dst, imagePrefix, img)
	rec := recipe{Runtime: "runc", Root: r.cfg.RuncRoot, ID: w.ID, Bundle: st.Bundle, TCP: len(conns) > 0, Locks: hostConns(conns),
		Stopped: nsPids(r.loadStopped(w.ID))}
	tasks := r.tasks(ctx, w)
	if tasks != nil {
		rec.Needs = needsOf(tasks()).withOptions(r.cfg.Options, w.ID)
	}
	ends := endsWithDump(conns, rec.Needs)
	args := []string{"checkpoint", "--image-path", img, "--work-path", work}
	if len(conns) > 0 {
		args = append(args, "--tcp-established")
	}
	if !ends {
		args = append(args, "--leave-running")
	}
	var cleanup []string // what an ended container's Thaw or Finish removes
	pd := r.pre.take(w.ID)
	if pd != nil {
		if pd.staging != "" {
			cleanup = append(cleanup, pd.staging)
			defer func() {
				if !keep {
					os.RemoveAll(pd.staging)
				}
			}()
		}
		rel, err := filepath.Rel(img, pd.dir)
		if err != nil {
			return nil, err
		}
		args = append(args, "--parent-path", rel)
	}
	var env []string
	if rec.Needs.FileLocks {
		args = append(args, "--file-locks")
	}
	if env, err = rec.Needs.configEnv(dir); err != nil {
		return nil, err
	}
	if ends {
		// The dump ends the container; from then on its only copy is
		// img: say so before CRIU runs.
		if err := r.willEnd(w, &ended{Rec: rec, Img: img, Cleanup: append(cleanup, dir)}, dst); err != nil {
			return nil, err
		}
		keep = true // even if CRIU fails: Thaw and Revive decide
	}
	start := time.Now()
	if _, err := r.runcCRIU(ctx, tasks, env, append(args, w.ID)...); err != nil {
		if direct && !ends {
			os.RemoveAll(img)
		}
		return nil, newCRIUError("dump", w.ID, filepath.Join(work, "dump.log"), err)
	}
	criuTook := time.Since(start)
	if ends {
		r.log.Info("the container ended with its dump", "workload", w.ID, "connections", len(conns), "link_remap", rec.Needs.LinkRemap)
	}
	rec.Stats = dumpStats(work) // runc has CRIU write stats-dump into the work dir
	start = time.Now()
	var names []string
	var n int64
	if direct {
		names, n, err = adoptDir(ctx, img, dst.(hypervisors.DirectSink))
	} else {
		names, n, err = storeDir(ctx, img, dst)
	}
	if err != nil {
		if direct && !ends {
			os.RemoveAll(img)
		}
		return nil, fmt.Errorf("storing images of %s: %w", w.ID, err)
	}
	rec.Images = names
	if pd != nil {
		rec.Parent = pd.names
	}
	if rec.Stats == nil {
		rec.Stats = &DumpStats{}
	}
	rec.Stats.ImageBytes = n
	rec.Stats.CRIUMicros = criuTook.Microseconds()
	rec.Stats.StoreMicros = time.Since(start).Microseconds()
	r.log.Debug("dumped", "workload", w.ID, "bytes", n, "stats", rec.Stats)
	return json.Marshal(rec)
}

// connections counts the established TCP connections of w's processes.
func (r *Runtime) connections(ctx context.Context, w hypervisors.Workload) ([]tcpConn, error) {
	cg, err := r.cgroup(ctx, w)
	if err != nil {
		return nil, err
	}
	pids, err := cg.Pids()
	if err != nil {
		return nil, fmt.Errorf("processes of %s: %w", w.ID, err)
	}
	return establishedTCP(pids)
}

// tasks returns a function listing w's tasks now (nil when its cgroup
// cannot be found): whom a CRIU killed after a cancel may hold seized.
func (r *Runtime) tasks(ctx context.Context, w hypervisors.Workload) func() []int {
	cg, err := r.cgroup(ctx, w)
	if err != nil {
		return nil
	}
	return func() []int {
		pids, _ := cg.Pids()
		return pids
	}
}

func imageDir(dst hypervisors.ObjectSink, prefix, staging string) (string, bool) {
	return hypervisors.FilesDir(dst, prefix, staging)
}

// adoptDir turns the image files CRIU wrote into the region into objects.
func adoptDir(ctx context.Context, dir string, dst hypervisors.DirectSink) ([]string, int64, error) {
	return hypervisors.AdoptDir(ctx, dir, imagePrefix, dst)
}

func dumpStats(img string) *DumpStats {
	d, err := os.Open(img)
	if err != nil {
		return nil
	}
	defer d.Close()
	s, err := stats.CriuGetDumpStats(d)
	if err != nil {
		return nil
	}
	return &DumpStats{FrozenMicros: s.GetFreezingTime() + s.GetFrozenTime(), MemdumpMicros: s.GetMemdumpTime(),
		MemwriteMicros: s.GetMemwriteTime(), PagesWritten: s.GetPagesWritten()}
}

// storeDir streams every regular file of dir into dst as images/<name>.
func storeDir(ctx context.Context, dir string, dst hypervisors.ObjectSink) ([]string, int64, error) {
	return hypervisors.StoreDir(ctx, dir, imagePrefix, dst)
}
