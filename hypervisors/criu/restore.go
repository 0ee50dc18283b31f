package criu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// Restore recreates a container with runc restore --detach from the
// images, so runc manages it again. Its stdout and stderr, pipes whose
// readers did not survive, are pipes again, read into LogDir/<id>.log by
// a process of their own (see startLogShim).
func (r *Runtime) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	if isTree(w) {
		return r.restoreTree(ctx, w, raw, src)
	}
	_, err := r.restore(ctx, w, raw, src, false)
	return err
}

// RestoreLazy implements hypervisors.LazyRestorer for runc containers,
// with CRIU's lazy-pages daemon serving the images (see lazy.go).
func (r *Runtime) RestoreLazy(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) (func() error, error) {
	if isTree(w) {
		return nil, fmt.Errorf("%w: lazy restore of a process tree (%s); it is restored in full", hypervisors.ErrNotSupported, w.ID)
	}
	return r.restore(ctx, w, raw, src, true)
}

// restore is Restore, lazy or not. A lazy restore keeps its staging
// directories until the returned wait is done.
func (r *Runtime) restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource, lazy bool) (func() error, error) {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("restore %s: bad recipe: %w", w.ID, err)
	}
	if rec.Runtime != "runc" {
		return nil, fmt.Errorf("restore %s: runtime %q is not supported", w.ID, rec.Runtime)
	}
	if _, err := os.Stat(filepath.Join(rec.Bundle, "config.json")); err != nil {
		return nil, fmt.Errorf("restore %s: bundle: %w", w.ID, err)
	}
	dir, err := r.stage(w.ID, "restore")
	if err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "images")
	if err := r.stageImages(src, rec, dir, &img); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("restore %s: %w", w.ID, err)
	}
	wait, err := r.restoreFrom(ctx, w, rec, img, lazy)
	return keepUntil(wait, func() { os.RemoveAll(dir) }), err
}

// keepUntil runs cleanup now when there is nothing to wait for, else once
// wait is done.
func keepUntil(wait func() error, cleanup func()) func() error {
	if wait == nil {
		cleanup()
		return nil
	}
	return func() error {
		defer cleanup()
		return wait()
	}
}

// restoreFrom runs runc restore --detach on the images in img; lazy, it
// returns what waits for the lazy-pages daemon.
func (r *Runtime) restoreFrom(ctx context.Context, w hypervisors.Workload, rec recipe, img string, lazy bool) (wait func() error, err error) {
	work, err := r.stage(w.ID, "restore-work")
	if err != nil {
		return nil, err
	}
	defer func() { wait = keepUntil(wait, func() { os.RemoveAll(work) }) }()
	img = r.rearmTimerfds(w, img, work)
	if img, err = restoreStopped(img, work, rec.Stopped); err != nil {
		return nil, fmt.Errorf("restore %s: %w", w.ID, err)
	}
	logf, err := startLogShim(ctx, "ckpt-log-"+rec.ID, filepath.Join(r.cfg.LogDir, rec.ID+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := []string{"--root", rec.Root, "--criu", r.cfg.CRIU, "restore", "--detach",
		"--image-path", img, "--work-path", work, "--bundle", rec.Bundle}
	if rec.TCP {
		args = append(args, "--tcp-established")
	}
	if rec.Needs.FileLocks {
		args = append(args, "--file-locks")
	}
	env, err := rec.Needs.configEnv(work)
	if err != nil {
		return nil, err
	}
	var lp *lazyPages
	if lazy {
		if lp, err = r.startLazyPages(w.ID, img, work); err != nil {
			return nil, fmt.Errorf("restore %s: %w", w.ID, err)
		}
		args = append(args, "--lazy-pages")
	}
	cmd := exec.Command(r.cfg.Runc, append(args, rec.ID)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = nil, logf, logf, env
	restoring := hypervisors.CRIURestoring()
	start := time.Now()
	err = runOwned(ctx, cmd, r.cfg.CancelGrace, nil)
	restoring()
	if err != nil {
		if lp != nil {
			// Tasks CRIU resumed before the failure (or the cancel) may
			// have handed their userfaultfds over already: hold them,
			// end whatever runs, only then end the daemon.
			lp.grab()
			r.killRestored(rec, nil)
			lp.abort()
		}
		return nil, newCRIUError("restore", w.ID, filepath.Join(work, "restore.log"), err)
	}
	r.noteRestore(w.ID, work, time.Since(start))
	if lp != nil {
		var cg *freezer.Cgroup
		if st, err := r.state(ctx, rec.ID); err == nil && st.Pid > 0 {
			cg, _ = freezer.OfPID(st.Pid)
		}
		wait = lp.watch(func() error { return r.killRestored(rec, cg) })
	}
	if err := lockConnections(ctx, rec.Locks, false); err != nil {
		if wait != nil {
			err = errors.Join(err, wait()) // the pages first: a container is never left to them
			wait = nil
		}
		return nil, err
	}
	return wait, nil
}

// killRestored ends a restored container for good: SIGKILL to every task
// (a task blocked on a page the lazy-pages daemon never served wakes only
// for that), then runc forgets it. Where runc cannot, every process of cg
// (if known) is killed directly; it fails only if some are left.
func (r *Runtime) killRestored(rec recipe, cg *freezer.Cgroup) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runc := func(args ...string) error {
		out, err := exec.CommandContext(ctx, r.cfg.Runc, append([]string{"--root", rec.Root}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	kerr := runc("kill", "--all", rec.ID, "KILL")
	if kerr != nil && cg != nil {
		for ctx.Err() == nil {
			pids := cg.PidList()
			if len(pids) == 0 {
				kerr = nil
				break
			}
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if derr := runc("delete", "--force", rec.ID); derr != nil && kerr != nil {
		return errors.Join(kerr, derr)
	}
	return kerr
}

// stageImages points *img at the images: in place where the source keeps
// verified objects as files (the "parent" link to a pre-dump is there
// too), else copied (and checked) under dir, with the link recreated.
func (r *Runtime) stageImages(src hypervisors.ObjectSource, rec recipe, dir string, img *string) error {
	if ds, ok := src.(hypervisors.DirectSource); ok {
		if d, err := ds.Dir(strings.TrimSuffix(imagePrefix, "/")); err == nil {
			*img = d
			return nil
		}
	}
	if err := hypervisors.LoadDir(src, rec.Images, imagePrefix, *img); err != nil {
		return err
	}
	if len(rec.Parent) > 0 {
		parent := filepath.Join(dir, "predump")
		if err := hypervisors.LoadDir(src, rec.Parent, predumpPrefix, parent); err != nil {
			return err
		}
		return os.Symlink("../predump", filepath.Join(*img, "parent"))
	}
	return nil
}

func readlink(p string) (string, error) { return os.Readlink(p) }
