package criu

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"google.golang.org/protobuf/proto"
)

// A task in the stopped state (SIGSTOP, job control) cannot be dumped
// from a frozen cgroup: CRIU's PTRACE_INTERRUPT of a task that is both
// frozen and stopped waits forever (criu#1905), and runc always hands
// CRIU the container's freezer. So Freeze continues such a task while
// its cgroup is frozen (it stays frozen; its parent will see a
// CLD_CONTINUED, then a CLD_STOPPED), and everything after puts the stop
// back before the task can run: Thaw sends SIGSTOP before it thaws (the
// stop is taken on the way out of the freezer), and a restore marks the
// task stopped in its core image, which CRIU restores stopped.

// taskStopped is CRIU's TASK_STOPPED task state (core image).
const taskStopped = 3

// stoppedTask is a task Freeze continued: its pid on the host and in its
// own pid namespace (what CRIU's images are named by).
type stoppedTask struct {
	Host int `json:"host"`
	NS   int `json:"ns"`
}

// procState is a process's state letter from /proc ("" if gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// nsPid is pid as its innermost pid namespace knows it.
func nsPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return pid
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(v)
			if n, err := strconv.Atoi(f[len(f)-1]); err == nil {
				return n
			}
		}
	}
	return pid
}

// stoppedOf lists the processes of pids that are stopped.
func stoppedOf(pids []int) []stoppedTask {
	var out []stoppedTask
	for _, p := range pids {
		if procState(p) == "T" {
			out = append(out, stoppedTask{Host: p, NS: nsPid(p)})
		}
	}
	return out
}

// continueStopped continues, in a frozen cgroup, the tasks that were
// stopped before the freeze, and records them (in memory and in a file
// under the staging directory, for a recover after a crash).
func (r *Runtime) continueStopped(w hypervisors.Workload, stopped []stoppedTask) error {
	if len(stopped) == 0 {
		return nil
	}
	if err := r.saveStopped(w.ID, stopped); err != nil {
		return err
	}
	for _, s := range stopped {
		if err := syscall.Kill(s.Host, syscall.SIGCONT); err != nil {
			return fmt.Errorf("continuing stopped pid %d of %s: %w", s.Host, w.ID, err)
		}
	}
	r.log.Info("continued stopped tasks inside the frozen cgroup; they are stopped again at thaw and restore", "workload", w.ID, "tasks", stopped)
	return nil
}

// restop stops again, before the thaw, the tasks Freeze continued, and
// returns a function that waits, after the thaw, until they are stopped.
func (r *Runtime) restop(id string) (wait func() error) {
	stopped := r.loadStopped(id)
	for _, s := range stopped {
		syscall.Kill(s.Host, syscall.SIGSTOP)
	}
	return func() error {
		for _, s := range stopped {
			deadline := time.Now().Add(5 * time.Second)
			for st := procState(s.Host); st != "T" && st != ""; st = procState(s.Host) {
				if time.Now().After(deadline) {
					return fmt.Errorf("pid %d of %s is %s, not stopped again", s.Host, id, st)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		r.dropStopped(id)
		return nil
	}
}

func (r *Runtime) stoppedFile(id string) string {
	return filepath.Join(r.cfg.WorkDir, "stopped", strings.ReplaceAll(id, "/", "_")+".json")
}

func (r *Runtime) saveStopped(id string, s []stoppedTask) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.stoppedFile(id)), 0o700); err != nil {
		return err
	}
	return os.WriteFile(r.stoppedFile(id), b, 0o600)
}

// loadStopped is what continueStopped recorded for id (by this ckpt or a
// killed one: the file is in /run, gone with the boot, as are the tasks).
func (r *Runtime) loadStopped(id string) []stoppedTask {
	var s []stoppedTask
	if b, err := os.ReadFile(r.stoppedFile(id)); err == nil {
		json.Unmarshal(b, &s)
	}
	return s
}

func (r *Runtime) dropStopped(id string) { os.Remove(r.stoppedFile(id)) }

// nsPids are the namespace pids of stopped, for a recipe.
func nsPids(stopped []stoppedTask) []int {
	var out []int
	for _, s := range stopped {
		out = append(out, s.NS)
	}
	return out
}

// restoreStopped returns the images directory to restore from: img, or an
// overlay (see writeOverlay) in which the core images of the tasks that
// were stopped say TASK_STOPPED, so that CRIU restores them stopped.
func restoreStopped(img, work string, pids []int) (string, error) {
	if len(pids) == 0 {
		return img, nil
	}
	fixed := map[string][]byte{}
	for _, pid := range pids {
		name := fmt.Sprintf("core-%d.img", pid)
		b, err := markStopped(filepath.Join(img, name))
		if err != nil {
			return img, fmt.Errorf("%s: %w", name, err)
		}
		fixed[name] = b
	}
	overlay := filepath.Join(work, "images-stopped")
	if err := writeOverlay(img, overlay, fixed); err != nil {
		os.RemoveAll(overlay)
		return img, err
	}
	return overlay, nil
}

// markStopped returns the core image at path with its task stopped by
// SIGSTOP.
func markStopped(path string) ([]byte, error) {
	b, err := readImage(path)
	if err != nil {
		return nil, err
	}
	m := magic.LoadMagic()
	if len(b) < 12 || uint64(binary.LittleEndian.Uint32(b)) != m.ByName["IMG_SERVICE"] && uint64(binary.LittleEndian.Uint32(b)) != m.ByName["IMG_COMMON"] ||
		uint64(binary.LittleEndian.Uint32(b[4:])) != m.ByName["CORE"] {
		return nil, fmt.Errorf("not a CORE image")
	}
	size := int(binary.LittleEndian.Uint32(b[8:]))
	if size > len(b)-12 {
		return nil, fmt.Errorf("entry of %d bytes overruns the image", size)
	}
	var core criucore.CoreEntry
	if err := proto.Unmarshal(b[12:12+size], &core); err != nil {
		return nil, err
	}
	if core.Tc == nil {
		return nil, fmt.Errorf("no task core")
	}
	core.Tc.TaskState, core.Tc.StopSigno = proto.Uint32(taskStopped), proto.Uint32(uint32(syscall.SIGSTOP))
	payload, err := proto.Marshal(&core)
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), b[:8]...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(payload)))
	out = append(out, payload...)
	return append(out, b[12+size:]...), nil
}
