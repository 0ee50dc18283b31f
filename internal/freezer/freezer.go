// Package freezer freezes and thaws a workload's cgroup (v1 freezer or
// v2 cgroup.freeze) and says when no CRIU still holds one of its tasks,
// for the backends that stop containers behind their runtime's back.
package freezer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// Root is where the cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// Cgroup is a workload's cgroup on a v1 (freezer + memory controllers) or
// v2 (unified) host.
type Cgroup struct {
	v1 cgroup1.Cgroup
	v2 *cgroup2.Manager
	// freezeFile requests the freeze; eventsFile (v2) or freezeFile (v1)
	// reports it.
	freezeFile string
}

// OfPID loads the cgroup that holds pid.
func OfPID(pid int) (*Cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		g, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, err
		}
		return cgroupV2(g)
	}
	path := cgroup1.PidPath(pid)
	fp, err := path(cgroup1.Freezer)
	if err != nil {
		return nil, fmt.Errorf("freezer cgroup of pid %d: %w", pid, err)
	}
	return cgroupV1(path, fp)
}

// OfPath loads a cgroup given as a path below the hierarchy roots,
// e.g. "/system.slice/foo.service".
func OfPath(p string) (*Cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		return cgroupV2(p)
	}
	return cgroupV1(cgroup1.StaticPath(p), p)
}

// Exists says whether the cgroup at path (below the hierarchy
// roots) still exists; false only when it is surely gone.
func Exists(p string) bool {
	dir := filepath.Join(Root, p)
	if cgroups.Mode() != cgroups.Unified {
		dir = filepath.Join(Root, "freezer", p)
	}
	_, err := os.Stat(dir)
	return !errors.Is(err, os.ErrNotExist)
}

func cgroupV1(path cgroup1.Path, freezerPath string) (*Cgroup, error) {
	hier := func() ([]cgroup1.Subsystem, error) {
		return []cgroup1.Subsystem{cgroup1.NewFreezer(Root), cgroup1.NewMemory(Root)}, nil
	}
	cg, err := cgroup1.Load(path, cgroup1.WithHierarchy(hier))
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", freezerPath, err)
	}
	return &Cgroup{v1: cg, freezeFile: filepath.Join(Root, "freezer", freezerPath, "freezer.state")}, nil
}

func cgroupV2(group string) (*Cgroup, error) {
	m, err := cgroup2.Load(group)
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", group, err)
	}
	return &Cgroup{v2: m, freezeFile: filepath.Join(Root, group, "cgroup.freeze")}, nil
}

// Freeze requests the freeze and waits for it until ctx is done; then it
// thaws and returns ctx's error. (cgroups/v3's own Freeze loops without a
// timeout and rewrites the state while it waits, so a Thaw cannot cancel
// it; we request once and poll.)
func (c *Cgroup) Freeze(ctx context.Context) error {
	req := "FROZEN"
	if c.v2 != nil {
		req = "1"
	}
	if err := os.WriteFile(c.freezeFile, []byte(req), 0); err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		frozen, err := c.Frozen()
		if err != nil {
			c.Thaw()
			return err
		}
		if frozen {
			return nil
		}
		select {
		case <-ctx.Done():
			if err := c.Thaw(); err != nil {
				return fmt.Errorf("freeze cancelled (%v), and thaw failed: %w", ctx.Err(), err)
			}
			return fmt.Errorf("freeze: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// ThawVerified thaws and returns only once the cgroup is thawed for good:
// no CRIU holds one of its tasks (a CRIU ending later would write back
// the freezer state it found) and the freezer reports it thawed.
func (c *Cgroup) ThawVerified(ctx context.Context, grace time.Duration) error {
	if err := c.Thaw(); err != nil {
		return err
	}
	if err := WaitUntraced(ctx, c.PidList(), grace); err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	if err := c.Thaw(); err != nil { // again: a CRIU that just ended may have refrozen it
		return err
	}
	frozen, err := c.Frozen()
	if err != nil {
		return err
	}
	if frozen {
		return fmt.Errorf("thaw: %s still reports frozen", c.freezeFile)
	}
	return nil
}

// Thaw resumes the cgroup's tasks.
func (c *Cgroup) Thaw() error {
	if c.v2 != nil {
		return c.v2.Thaw()
	}
	return c.v1.Thaw()
}

// Frozen reports whether every task is frozen.
func (c *Cgroup) Frozen() (bool, error) {
	if c.v2 != nil {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(c.freezeFile), "cgroup.events"))
		if err != nil {
			return false, err
		}
		return strings.Contains(string(b), "frozen 1"), nil
	}
	return c.v1.State() == cgroup1.Frozen, nil
}

// Dir is the cgroup's directory in the freezer hierarchy (what CRIU's
// --freeze-cgroup takes).
func (c *Cgroup) Dir() string { return filepath.Dir(c.freezeFile) }

// MemoryOfPID is the memory charged to pid's cgroup, 0 where unknown.
func MemoryOfPID(pid int) int64 {
	cg, err := OfPID(pid)
	if err != nil {
		return 0
	}
	n, _ := cg.MemoryBytes()
	return n
}

// MemoryBytes is the cgroup's current memory use.
func (c *Cgroup) MemoryBytes() (int64, error) {
	if c.v2 != nil {
		st, err := c.v2.Stat()
		if err != nil {
			return 0, err
		}
		return int64(st.GetMemory().GetUsage()), nil
	}
	st, err := c.v1.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return 0, err
	}
	return int64(st.GetMemory().GetUsage().GetUsage()), nil
}

// PidList is Pids without the error (nil then).
func (c *Cgroup) PidList() []int {
	pids, _ := c.Pids()
	return pids
}

// Pids lists the processes in the cgroup and its children.
func (c *Cgroup) Pids() ([]int, error) {
	var pids []int
	if c.v2 != nil {
		ps, err := c.v2.Procs(true)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			pids = append(pids, int(p))
		}
		return pids, nil
	}
	ps, err := c.v1.Processes(cgroup1.Freezer, true)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		pids = append(pids, p.Pid)
	}
	return pids, nil
}

// TracerOf returns the pid tracing pid (0 if none or unknown).
func TracerOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// IsCRIU says whether pid runs criu.
func IsCRIU(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "criu"
}

// ErrTraced: a task is still seized by a CRIU.
var ErrTraced = errors.New("still seized by CRIU")

// WaitUntraced waits until no task of pids is traced by a CRIU, so that a
// thaw cannot be undone by a CRIU ending later.
func WaitUntraced(ctx context.Context, pids []int, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		tracer := 0
		for _, p := range pids {
			if t := TracerOf(p); t > 0 && IsCRIU(t) {
				tracer = t
				break
			}
		}
		if tracer == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (criu pid %d) after %s", ErrTraced, tracer, grace)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (criu pid %d): %v", ErrTraced, tracer, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
