package criu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// Restore recreates a container with runc restore --detach from the
// images, so runc manages it again. Its stdout and stderr, pipes whose
// readers did not survive, are pipes again, read into LogDir/<id>.log by
// a process of their own (see startLogShim).
func (r *Runtime) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	if isTree(w) {
		return r.restoreTree(ctx, w, raw, src)
	}
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("restore %s: bad recipe: %w", w.ID, err)
	}
	if rec.Runtime != "runc" {
		return fmt.Errorf("restore %s: runtime %q is not supported", w.ID, rec.Runtime)
	}
	if _, err := os.Stat(filepath.Join(rec.Bundle, "config.json")); err != nil {
		return fmt.Errorf("restore %s: bundle: %w", w.ID, err)
	}
	dir, err := r.stage(w.ID, "restore")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "images")
	if err := r.stageImages(src, rec, dir, &img); err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	return r.restoreFrom(ctx, w, rec, img)
}

// restoreFrom runs runc restore --detach on the images in img.
func (r *Runtime) restoreFrom(ctx context.Context, w hypervisors.Workload, rec recipe, img string) error {
	work, err := r.stage(w.ID, "restore-work")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	img = r.rearmTimerfds(w, img, work)
	if img, err = restoreStopped(img, work, rec.Stopped); err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	logf, err := startLogShim(ctx, "ckpt-log-"+rec.ID, filepath.Join(r.cfg.LogDir, rec.ID+".log"))
	if err != nil {
		return err
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
		return err
	}
	cmd := exec.Command(r.cfg.Runc, append(args, rec.ID)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = nil, logf, logf, env
	restoring := hypervisors.CRIURestoring()
	start := time.Now()
	err = runOwned(ctx, cmd, r.cfg.CancelGrace, nil)
	restoring()
	if err != nil {
		return newCRIUError("restore", w.ID, filepath.Join(work, "restore.log"), err)
	}
	r.noteRestore(w.ID, work, time.Since(start))
	return lockConnections(ctx, rec.Locks, false)
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
