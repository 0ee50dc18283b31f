package criu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	gocriu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
	"github.com/containerd/cgroups/v3"
	"google.golang.org/protobuf/proto"
)

// Plain process trees (a systemd service, say) are given as cgroup paths
// and dumped and restored with CRIU's RPC (go-criu): there is no runtime
// to keep in step. The workload ID is "cgroup:" + the path.

// KindProcessTree is the kind of a workload given as a cgroup.
const KindProcessTree = "process-tree"

const treeIDPrefix = "cgroup:"

func isTree(w hypervisors.Workload) bool { return strings.HasPrefix(w.ID, treeIDPrefix) }

func treePath(w hypervisors.Workload) string { return strings.TrimPrefix(w.ID, treeIDPrefix) }

// treeRecipe is the restore record of a process tree.
type treeRecipe struct {
	Cgroup string    `json:"cgroup"`
	Root   int       `json:"root_pid"`
	Images []string  `json:"images"`
	Pids   []int     `json:"pids,omitempty"` // every pid, which CRIU gives back
	TCP    bool      `json:"tcp_established,omitempty"`
	Locks  []tcpConn `json:"net_locks,omitempty"` // see recipe.Locks
	// Unit is the systemd service whose cgroup this is: systemd starts it
	// again at restore, so that it manages the tree (see unit.go).
	Unit    string     `json:"systemd_unit,omitempty"`
	Pipes   []string   `json:"pipes,omitempty"`     // stdio pipes ("pipe:[N]") to reconnect
	Shell   bool       `json:"shell_job,omitempty"` // the session is outside the tree
	Needs   criuNeeds  `json:"criu,omitempty"`      // what CRIU was told (file locks, …)
	Stopped []int      `json:"stopped,omitempty"`   // see recipe.Stopped
	Stats   *DumpStats `json:"stats,omitempty"`
}

// discoverTrees lists the configured cgroups that hold processes.
func (r *Runtime) discoverTrees() []hypervisors.Workload {
	var ws []hypervisors.Workload
	for _, p := range r.treePaths() {
		cg, err := freezer.OfPath(p)
		if err != nil {
			r.log.Debug("process tree not found", "cgroup", p, "err", err)
			continue
		}
		pids, err := cg.Pids()
		if err != nil || len(pids) == 0 {
			continue
		}
		w := hypervisors.Workload{ID: treeIDPrefix + p, Kind: KindProcessTree, Backend: Name,
			Attrs: map[string]string{"cgroup": p}}
		if roots := treeRoots(pids); len(roots) > 0 {
			w.PID = roots[0]
		}
		w.MemoryBytes, _ = cg.MemoryBytes()
		ws = append(ws, w)
	}
	return ws
}

// treePaths expands the configured cgroups, which may be globs
// ("/system.slice/app@*.service"), to the cgroups that exist now.
func (r *Runtime) treePaths() []string {
	base := filepath.Join(freezer.Root, "freezer")
	if cgroups.Mode() == cgroups.Unified {
		base = freezer.Root
	}
	var paths []string
	for _, pat := range r.cfg.ProcessTrees {
		ms, err := filepath.Glob(filepath.Join(base, pat))
		if err != nil {
			r.log.Warn("bad process tree pattern", "cgroup", pat, "err", err)
			continue
		}
		for _, m := range ms {
			if fi, err := os.Stat(m); err == nil && fi.IsDir() {
				paths = append(paths, "/"+strings.TrimPrefix(m, base+"/"))
			}
		}
	}
	return paths
}

// treeRoots returns the processes of pids whose parent is not among them.
func treeRoots(pids []int) []int {
	in := map[int]bool{}
	for _, p := range pids {
		in[p] = true
	}
	var roots []int
	for _, p := range pids {
		if st, err := procStat(p); err == nil && !in[st.ppid] {
			roots = append(roots, p)
		}
	}
	return roots
}

type stat struct{ ppid, sid int }

// procStat reads the parent and session of pid from /proc/PID/stat.
func procStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	// pid (comm) state ppid pgrp session …; comm may hold spaces.
	s := string(b)
	fs := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fs) < 4 {
		return stat{}, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ppid, _ := strconv.Atoi(fs[1])
	sid, _ := strconv.Atoi(fs[3])
	return stat{ppid: ppid, sid: sid}, nil
}

// treeRoot is the one process CRIU dumps the tree from.
// seizeTimeout bounds CRIU's seizing of a tree's tasks, in seconds
// (CRIU's default is 10). A task in uninterruptible sleep cannot be
// seized until its I/O ends, and the dumps of the other workloads,
// written to the same disk at the same time, can hold it there longer:
// in the e2e guest a dump into a region on a virtio disk failed with
// "Unseizable non-zombie … state D" after 10 s. Waiting costs nothing
// when every task is seizable at once.
const seizeTimeout = 60

func (r *Runtime) treeRoot(w hypervisors.Workload) (*freezer.Cgroup, []int, int, error) {
	cg, err := r.cgroup(context.Background(), w)
	if err != nil {
		return nil, nil, 0, err
	}
	pids, err := cg.Pids()
	if err != nil {
		return nil, nil, 0, err
	}
	roots := treeRoots(pids)
	switch {
	case len(pids) == 0:
		return nil, nil, 0, fmt.Errorf("%w: %s holds no process", hypervisors.ErrNotFound, w.ID)
	case len(roots) != 1:
		return nil, nil, 0, fmt.Errorf("%w: %s holds %d separate process trees (roots %v); CRIU restores one tree per cgroup. "+
			"Give each tree a cgroup of its own (a systemd unit each, or systemd-run --scope) and list those, or start them from one parent (a shell or a subreaper)",
			hypervisors.ErrNotCheckpointable, w.ID, len(roots), roots)
	}
	return cg, pids, roots[0], nil
}

// preflightTree: one tree, and stdio CRIU can restore.
func (r *Runtime) preflightTree(w hypervisors.Workload) error {
	_, pids, root, err := r.treeRoot(w)
	if err != nil {
		return err
	}
	if err := cgroupFiles(w.ID, pids); err != nil {
		return err
	}
	if st, err := procStat(root); err == nil && st.sid == 0 {
		return fmt.Errorf("%w: %s: the session of pid %d has its leader outside this pid namespace (session 0), which CRIU cannot dump; start the tree in a session of its own (setsid, or a systemd unit)",
			hypervisors.ErrNotCheckpointable, w.ID, root)
	}
	for fd := 0; fd <= 2; fd++ {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", root, fd))
		if err == nil && strings.HasPrefix(l, "socket:") {
			return fmt.Errorf("%w: %s: fd %d of pid %d is a socket (%s), e.g. journald's stream, which CRIU cannot reconnect; use StandardOutput=file: or a pipe",
				hypervisors.ErrNotCheckpointable, w.ID, fd, root, l)
		}
	}
	return nil
}

// dumpTree dumps a frozen process tree through CRIU's RPC. As for
// containers, it leaves the tree frozen and alive, unless it holds
// established TCP connections (see Dump).
func (r *Runtime) dumpTree(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	cg, pids, root, err := r.treeRoot(w)
	if err != nil {
		return nil, err
	}
	conns, err := establishedTCP(pids)
	if err != nil {
		return nil, err
	}
	rec := treeRecipe{Cgroup: treePath(w), Root: root, Pids: pids, TCP: len(conns) > 0, Locks: hostConns(conns), Unit: r.systemdUnit(ctx, treePath(w))}
	if st, err := procStat(root); err == nil && st.sid != root {
		rec.Shell = true
	}
	for fd := 0; fd <= 2; fd++ {
		// CRIU closes an inherited fd once it has it: one entry per pipe.
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", root, fd)); err == nil && strings.HasPrefix(l, "pipe:") && !slices.Contains(rec.Pipes, l) {
			rec.Pipes = append(rec.Pipes, l)
		}
	}
	dir, err := r.stage(strings.ReplaceAll(treePath(w), "/", "_"), "dump")
	if err != nil {
		return nil, err
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(dir)
		}
	}()
	img, work := filepath.Join(dir, "images"), filepath.Join(dir, "work")
	img, direct := imageDir(dst, imagePrefix, img)
	rec.Needs = needsOf(pids).withOptions(r.cfg.Options, w.ID)
	rec.Stopped = nsPids(r.loadStopped(w.ID))
	ends := endsWithDump(conns, rec.Needs)
	opts := &rpc.CriuOpts{
		Pid:            proto.Int32(int32(root)),
		LeaveRunning:   proto.Bool(!ends),
		TcpEstablished: proto.Bool(len(conns) > 0),
		ShellJob:       proto.Bool(rec.Shell),
		FreezeCgroup:   proto.String(cg.Dir()),
		ManageCgroups:  proto.Bool(true),
		LogLevel:       proto.Int32(4),
		LogFile:        proto.String("dump.log"),
		Timeout:        proto.Uint32(seizeTimeout),
	}
	if err := rec.Needs.rpc(opts, dir); err != nil {
		return nil, err
	}
	if ends {
		// The dump ends the tree: say so before CRIU runs (see Dump).
		if err := r.willEnd(w, &ended{Tree: &rec, Img: img, Cleanup: []string{dir}}, dst); err != nil {
			return nil, err
		}
		keep = true
	}
	start := time.Now()
	if err := r.swrk(ctx, rpc.CriuReqType_DUMP, img, work, opts, nil, cg.PidList); err != nil {
		if direct && !ends {
			os.RemoveAll(img)
		}
		return nil, criuErr("dump", w.ID, work, "dump.log", err)
	}
	criuTook := time.Since(start)
	rec.Stats = dumpStats(img)
	start = time.Now()
	var n int64
	if direct {
		rec.Images, n, err = adoptDir(ctx, img, dst.(hypervisors.DirectSink))
	} else {
		rec.Images, n, err = storeDir(ctx, img, dst)
	}
	if err != nil {
		return nil, fmt.Errorf("storing images of %s: %w", w.ID, err)
	}
	if rec.Stats == nil {
		rec.Stats = &DumpStats{}
	}
	rec.Stats.ImageBytes, rec.Stats.CRIUMicros, rec.Stats.StoreMicros = n, criuTook.Microseconds(), time.Since(start).Microseconds()
	return json.Marshal(rec)
}

// restoreTree restores a process tree, detached from ckpt, into its
// cgroup; stdio pipes whose other end is gone go to LogDir.
func (r *Runtime) restoreTree(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec treeRecipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("restore %s: bad recipe: %w", w.ID, err)
	}
	dir, err := r.stage(strings.ReplaceAll(rec.Cgroup, "/", "_"), "restore")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "images")
	if err := r.stageImages(src, recipe{Images: rec.Images}, dir, &img); err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	return r.restoreTreeFrom(ctx, w, &rec, img)
}

func (r *Runtime) restoreTreeFrom(ctx context.Context, w hypervisors.Workload, rec *treeRecipe, img string) error {
	if err := pidsFree(rec.Pids); err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	work, err := r.stage(strings.ReplaceAll(rec.Cgroup, "/", "_"), "restore-work")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	img = r.rearmTimerfds(w, img, work)
	if img, err = restoreStopped(img, work, rec.Stopped); err != nil {
		return fmt.Errorf("restore %s: %w", w.ID, err)
	}
	if rec.Unit != "" {
		if _, err := os.Stat(systemdRun); err == nil {
			if err := r.restoreUnit(ctx, rec.Unit, work, treeCLIArgs(rec, img, work)); err != nil {
				return newCRIUError("restore", w.ID, filepath.Join(work, "restore.log"), err)
			}
			return lockConnections(ctx, rec.Locks, false)
		}
	}
	opts := &rpc.CriuOpts{
		TcpEstablished:    proto.Bool(rec.TCP),
		ShellJob:          proto.Bool(rec.Shell),
		ManageCgroups:     proto.Bool(true),
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
		LogLevel:          proto.Int32(4),
		LogFile:           proto.String("restore.log"),
	}
	if err := rec.Needs.rpc(opts, work); err != nil {
		return err
	}
	if len(rec.Pipes) > 0 {
		// The pipes' readers did not survive: a new reader appends what
		// the tree writes to its log, as a service manager's would.
		logPath := filepath.Join(r.cfg.LogDir, strings.ReplaceAll(strings.Trim(rec.Cgroup, "/"), "/", "_")+".log")
		pw, err := startLogShim(ctx, "ckpt-log-"+strings.ReplaceAll(strings.Trim(rec.Cgroup, "/"), "/", "-"), logPath)
		if err != nil {
			return fmt.Errorf("restore %s: %w", w.ID, err)
		}
		defer pw.Close()
		// CRIU takes inherited fds by number in its own table: a dup has
		// no close-on-exec, so the criu swrk started next inherits it.
		fd, err := syscall.Dup(int(pw.Fd()))
		if err != nil {
			return fmt.Errorf("restore %s: %w", w.ID, err)
		}
		defer syscall.Close(fd)
		for _, p := range rec.Pipes {
			opts.InheritFd = append(opts.InheritFd, &rpc.InheritFd{Key: proto.String(p), Fd: proto.Int32(int32(fd))})
		}
	}
	var pid notifyPID
	restoring := hypervisors.CRIURestoring()
	start := time.Now()
	err = r.swrk(ctx, rpc.CriuReqType_RESTORE, img, work, opts, &pid, nil)
	restoring()
	if err != nil {
		return criuErr("restore", w.ID, work, "restore.log", err)
	}
	r.noteRestore(w.ID, work, time.Since(start))
	r.log.Debug("restored process tree", "workload", w.ID, "pid", int(pid.pid))
	return lockConnections(ctx, rec.Locks, false)
}

// treeCLIArgs are criu restore's arguments for a tree (as restoreTreeFrom
// gives them over RPC), for a restore that systemd runs. Stdio pipes go
// to the unit's own stdout.
func treeCLIArgs(rec *treeRecipe, img, work string) []string {
	args := []string{"--images-dir", img, "--work-dir", work, "--manage-cgroups=soft", "-v4", "--log-file", "restore.log"}
	if rec.TCP {
		args = append(args, "--tcp-established")
	}
	if rec.Shell {
		args = append(args, "--shell-job")
	}
	for _, p := range rec.Pipes {
		args = append(args, "--inherit-fd", "fd[1]:"+p)
	}
	if rec.Needs.FileLocks {
		args = append(args, "--file-locks")
	}
	for _, l := range rec.Needs.configLines() {
		name, val, _ := strings.Cut(l, " ")
		args = append(args, "--"+name)
		if val != "" {
			args = append(args, val)
		}
	}
	return args
}

// notifyPID records the restored root's pid.
type notifyPID struct {
	gocriu.NoNotify
	pid int32
}

func (n *notifyPID) PostRestore(pid int32) error { n.pid = pid; return nil }

// swrk runs one CRIU RPC request with the images and work directories.
// go-criu's calls take no context: a cancelled ctx waits for the request
// (see awaitOwned), then kills the CRIU tracing pids() (the tree's tasks;
// nil for a restore, whose CRIU ends when its socket closes).
func (r *Runtime) swrk(ctx context.Context, req rpc.CriuReqType, img, work string, opts *rpc.CriuOpts, nfy gocriu.Notify, pids func() []int) error {
	for _, d := range []string{img, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	imgF, err := os.Open(img)
	if err != nil {
		return err
	}
	defer imgF.Close()
	workF, err := os.Open(work)
	if err != nil {
		return err
	}
	defer workF.Close()
	opts.ImagesDirFd = proto.Int32(int32(imgF.Fd()))
	opts.WorkDirFd = proto.Int32(int32(workF.Fd()))
	path, swrkPid, cleanup, err := callWrapper(r.swrkPath)
	if err != nil {
		return err
	}
	defer cleanup()
	c := gocriu.MakeCriu()
	c.SetCriuPath(path)
	done := make(chan error, 1)
	go func() {
		switch req {
		case rpc.CriuReqType_DUMP:
			done <- c.Dump(opts, nfy)
		case rpc.CriuReqType_RESTORE:
			done <- c.Restore(opts, nfy)
		default:
			done <- fmt.Errorf("unsupported request %v", req)
		}
	}()
	return awaitOwned(ctx, done, r.cfg.CancelGrace, func() {
		// This call's CRIU and its session (a restore traces no pid
		// known here), and any CRIU still tracing the tree.
		if pid := swrkPid(); pid > 0 {
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		killTracers(pids)
	})
}

// criuErr wraps a go-criu error with CRIU's errno and log tail.
func criuErr(op, id, work, log string, err error) error {
	ce := newCRIUError(op, id, filepath.Join(work, log), err)
	var errno int
	if i := strings.LastIndex(err.Error(), "err:"); i >= 0 {
		fmt.Sscanf(err.Error()[i:], "err:%d)", &errno)
	}
	ce.Errno = errno
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		ce.Log = ""
	}
	return ce
}

// finishTree ends the original tree: SIGKILL queued while frozen, then a
// thaw so the tasks die before running any code.
func (r *Runtime) finishTree(ctx context.Context, w hypervisors.Workload) error {
	cg, err := r.cgroup(ctx, w)
	if err != nil {
		return err
	}
	pids, err := cg.Pids()
	if err != nil {
		return err
	}
	if unit := r.systemdUnit(ctx, treePath(w)); unit != "" {
		if err := maskUnit(ctx, unit); err != nil {
			return fmt.Errorf("finish %s: %w", w.ID, err)
		}
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	// The service manager may reap the killed tasks and remove their
	// cgroup at once: then there is nothing left to thaw (ENODEV, ENOENT).
	if err := cg.Thaw(); err != nil && !errors.Is(err, syscall.ENODEV) && !errors.Is(err, syscall.ENOENT) && freezer.Exists(treePath(w)) {
		return err
	}
	// The restore needs the same pids: wait until the tree's parent (the
	// service manager) has reaped them.
	var left []int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		left = left[:0]
		for _, p := range pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); err == nil {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
	}
	return fmt.Errorf("finish %s: pids %v are still taken (not reaped by their parent?); CRIU restores the tree with the same pids", w.ID, left)
}
