package criu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// runc runs the runtime with our root and CRIU, returning stdout. A
// cancelled ctx kills it at once: use runcCRIU for calls that drive CRIU.
func (r *Runtime) runc(ctx context.Context, args ...string) ([]byte, error) {
	return r.runcOwned(ctx, 0, nil, nil, args...)
}

// runcCRIU runs a runc command that drives CRIU on the tasks pids()
// (checkpoint, restore) with env (nil: ckpt's own): a cancelled ctx gives
// it Config.CancelGrace to end on its own before it is killed (see
// runOwned).
func (r *Runtime) runcCRIU(ctx context.Context, pids func() []int, env []string, args ...string) ([]byte, error) {
	return r.runcOwned(ctx, r.cfg.CancelGrace, pids, env, args...)
}

func (r *Runtime) runcOwned(ctx context.Context, grace time.Duration, pids func() []int, env []string, args ...string) ([]byte, error) {
	full := append([]string{"--root", r.cfg.RuncRoot, "--criu", r.cfg.CRIU}, args...)
	cmd := exec.Command(r.cfg.Runc, full...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runOwned(ctx, cmd, grace, pids); err != nil {
		return stdout.Bytes(), fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// runcContainer is one entry of runc list --format json.
type runcContainer struct {
	ID     string `json:"id"`
	PID    int    `json:"pid"`
	Status string `json:"status"`
	Bundle string `json:"bundle"`
}

// Discover lists runc's running and paused containers.
func (r *Runtime) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	out, err := r.runc(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var cs []runcContainer
	if len(bytes.TrimSpace(out)) > 0 && !bytes.Equal(bytes.TrimSpace(out), []byte("null")) {
		if err := json.Unmarshal(out, &cs); err != nil {
			return nil, fmt.Errorf("runc list: %w", err)
		}
	}
	ws := r.discoverTrees()
	for _, c := range cs {
		if c.Status != string(specs.StateRunning) && c.Status != "paused" {
			continue
		}
		w := hypervisors.Workload{ID: c.ID, Kind: "container", Backend: Name, PID: c.PID,
			Attrs: map[string]string{"runtime": "runc", "bundle": c.Bundle, "root": r.cfg.RuncRoot, "status": c.Status}}
		if m := managerOf(c.Bundle); hasBackend(m) {
			continue // its manager's backend lists it (one claim per workload)
		} else if m != "" {
			w.Attrs["manager"] = m
		}
		if cg, err := freezer.OfPID(c.PID); err == nil {
			w.MemoryBytes, _ = cg.MemoryBytes()
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// state returns the runtime's view of one container.
func (r *Runtime) state(ctx context.Context, id string) (*specs.State, error) {
	out, err := r.runc(ctx, "state", id)
	if err != nil {
		// Only a container runc has no state for is gone: a timeout, a
		// cancel or a runc crash says nothing about the container.
		if _, serr := os.Lstat(filepath.Join(r.cfg.RuncRoot, id, "state.json")); errors.Is(serr, os.ErrNotExist) && ctx.Err() == nil {
			return nil, fmt.Errorf("%w: %s: %v", hypervisors.ErrNotFound, id, err)
		}
		return nil, fmt.Errorf("state of %s: %w", id, err)
	}
	var st specs.State
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("runc state %s: %w", id, err)
	}
	return &st, nil
}

func (r *Runtime) cgroup(ctx context.Context, w hypervisors.Workload) (*freezer.Cgroup, error) {
	if isTree(w) {
		cg, err := freezer.OfPath(treePath(w))
		if err != nil {
			if !freezer.Exists(treePath(w)) {
				return nil, fmt.Errorf("%w: %s: %v", hypervisors.ErrNotFound, w.ID, err)
			}
			return nil, err
		}
		return cg, nil
	}
	st, err := r.state(ctx, w.ID)
	if err != nil {
		return nil, err
	}
	if st.Pid == 0 {
		return nil, fmt.Errorf("%w: %s has no process", hypervisors.ErrNotFound, w.ID)
	}
	return freezer.OfPID(st.Pid)
}

// Freeze implements hypervisors.Backend with the cgroup freezer. Tasks
// that were stopped are continued inside the frozen cgroup (see
// stopped.go); Thaw and Restore stop them again.
func (r *Runtime) Freeze(ctx context.Context, w hypervisors.Workload) error {
	cg, err := r.cgroup(ctx, w)
	if err != nil {
		return err
	}
	stopped := stoppedOf(cg.PidList()) // a frozen stopped task shows as sleeping: look first
	if err := cg.Freeze(ctx); err != nil {
		return err
	}
	if err := r.continueStopped(w, stopped); err != nil {
		wait := r.restop(w.ID)
		return errors.Join(err, cg.Thaw(), wait())
	}
	return nil
}

// Thaw implements hypervisors.Backend. A container its Dump ended is
// restored from the images the Dump wrote. Thaw returns once the thaw
// holds (see cgroup.ThawVerified), and can be repeated; a container that
// was paused before the suspend stays paused.
func (r *Runtime) Thaw(ctx context.Context, w hypervisors.Workload) error {
	r.pre.drop(w.ID)
	if e := r.ended.take(w.ID); e != nil {
		err := r.revive(ctx, w, e)
		if err != nil {
			r.ended.put(w.ID, e) // a second Thaw tries again
		}
		return err
	}
	cg, err := r.cgroup(ctx, w)
	if err != nil {
		return err
	}
	if isTree(w) && len(cg.PidList()) == 0 {
		return fmt.Errorf("%w: %s: its cgroup holds no process", hypervisors.ErrNotFound, w.ID)
	}
	if w.Attrs["status"] == "paused" {
		return freezer.WaitUntraced(ctx, cg.PidList(), r.cfg.CancelGrace)
	}
	if err := freezer.WaitUntraced(ctx, cg.PidList(), r.cfg.CancelGrace); err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	restopped := r.restop(w.ID) // before the thaw: no user code runs in between
	if err := cg.ThawVerified(ctx, r.cfg.CancelGrace); err != nil {
		return err
	}
	return restopped()
}

// Finish ends the original container after its checkpoint is committed:
// SIGKILL is queued while the tasks are frozen, so no user code runs after
// the dump, then the container is thawed (to die) and deleted.
func (r *Runtime) Finish(ctx context.Context, w hypervisors.Workload) error {
	r.pre.drop(w.ID)
	defer r.dropStopped(w.ID)
	if e := r.ended.take(w.ID); e != nil {
		e.remove() // the dump ended it already
		return nil
	}
	if isTree(w) {
		return r.finishTree(ctx, w)
	}
	if _, err := r.runc(ctx, "kill", "--all", w.ID, "KILL"); err != nil {
		return err
	}
	if cg, err := r.cgroup(ctx, w); err == nil {
		cg.Thaw()
	}
	_, err := r.runc(ctx, "delete", "--force", w.ID)
	return err
}

// Preflight implements hypervisors.Preflighter: the container must exist
// and its stdio must be something CRIU can restore (a pipe, a terminal,
// /dev/null); a host file fails the dump with "Can't lookup mount".
func (r *Runtime) Preflight(ctx context.Context, w hypervisors.Workload) error {
	if isTree(w) {
		return r.preflightTree(w)
	}
	st, err := r.state(ctx, w.ID)
	if err != nil {
		return err
	}
	if st.Bundle == "" {
		return fmt.Errorf("%w: %s: runc reports no bundle", hypervisors.ErrNotCheckpointable, w.ID)
	}
	if m := managerOf(st.Bundle); m != "" {
		return fmt.Errorf("%w: %s is %s's container (seen through runc root %s), and suspending it behind %s's back would leave its records wrong: %s",
			hypervisors.ErrNotCheckpointable, w.ID, m, r.cfg.RuncRoot, m, managerAdvice(m))
	}
	if cg, err := freezer.OfPID(st.Pid); err == nil {
		if pids, err := cg.Pids(); err == nil {
			if err := cgroupFiles(w.ID, pids); err != nil {
				return err
			}
		}
	}
	for fd := 0; fd <= 2; fd++ {
		target, err := readlink(fmt.Sprintf("/proc/%d/fd/%d", st.Pid, fd))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, "/") && !strings.HasPrefix(target, "/dev/") {
			return fmt.Errorf("%w: %s: fd %d is the host file %s, which CRIU cannot restore; give the container pipes or a terminal",
				hypervisors.ErrNotCheckpointable, w.ID, fd, target)
		}
	}
	return nil
}

// cgroupFiles refuses processes holding cgroupfs files open, which CRIU
// cannot dump ("Can't create link remap for /sys/fs/cgroup/.../cpu.max"):
// Go >= 1.25 keeps cpu.max open for container-aware GOMAXPROCS.
func cgroupFiles(id string, pids []int) error {
	for _, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			l, err := readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err == nil && strings.HasPrefix(l, freezer.Root+"/") {
				return fmt.Errorf("%w: %s: fd %s of pid %d is the cgroup file %s, which CRIU cannot dump; "+
					"a Go >= 1.25 program keeps cpu.max open unless run with GODEBUG=containermaxprocs=0",
					hypervisors.ErrNotCheckpointable, id, fd.Name(), pid, l)
			}
		}
	}
	return nil
}
