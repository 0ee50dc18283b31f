// Package criu suspends containers run by an OCI runtime (runc) with CRIU.
//
// Containers are frozen with the cgroup freezer (cgroups/v3), dumped with
// the runtime's own checkpoint (runc checkpoint --leave-running, which
// drives CRIU) so that the runtime's bookkeeping stays right, and restored
// with runc restore, after which runc manages the container again (runc
// list shows it, runc kill works). A dump leaves the container frozen and
// alive, so rollback is a thaw; the original ends only in Finish, after the
// checkpoint is committed. go-criu checks CRIU's version and reads CRIU's
// dump statistics.
//
// CRIU writes images straight into a directory region and restore reads
// them there; for a raw region (pmem) they are staged on tmpfs and streamed
// into region objects, and back at restore.
//
// Established TCP connections survive: a container holding some is dumped
// with --tcp-established and ended by the dump (see Runtime.Dump), and
// restored with its connections; the peers only see a pause.
package criu

import (
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"time"

	gocriu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/atomicfile"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Name is the backend's registered name.
const Name = "criu"

// MinCRIU is the oldest CRIU that works on current kernels: 3.17 fails
// with "Unexpected rt vDSO area bounds" on kernels >= 6.13 and 4.1 hangs
// where hardware breakpoints do not work.
const MinCRIU = 40200

// Config configures the backend. Zero values mean defaults.
type Config struct {
	Runc     string `json:"runc"`      // runc binary (default "runc" in PATH)
	RuncRoot string `json:"runc_root"` // runc --root (default /run/runc)
	CRIU     string `json:"criu"`      // criu binary (default "criu" in PATH)
	WorkDir  string `json:"work_dir"`  // staging for images (default /run/ckpt/criu)
	LogDir   string `json:"log_dir"`   // restored containers' stdout/stderr (default /var/log/ckpt)
	// ProcessTrees are cgroups (paths below the hierarchy root, or globs, e.g.
	// "/system.slice/foo.service") whose processes form one tree to
	// suspend as a workload "cgroup:<path>".
	ProcessTrees []string `json:"process_trees"`
	// Options are more CRIU options for the workloads whose ID matches a
	// key (a path.Match pattern: "web-*", "cgroup:/system.slice/db.service"),
	// as in a CRIU configuration file: "tcp-close", "ext-unix-sk",
	// "external mnt[]:m". They are recorded for the restore too.
	Options map[string][]string `json:"options"`
	// CancelGrace is how long a cancelled CRIU call may go on before it
	// is killed (default DefaultCancelGrace; see runOwned).
	CancelGrace time.Duration `json:"-"`

	defaultWorkDir bool // WorkDir is ours, in /run: see mountStaging
}

func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Runc, "runc")
	def(&c.RuncRoot, "/run/runc")
	def(&c.CRIU, "criu")
	c.defaultWorkDir = c.WorkDir == ""
	def(&c.WorkDir, "/run/ckpt/criu")
	def(&c.LogDir, "/var/log/ckpt")
	if c.CancelGrace <= 0 {
		c.CancelGrace = DefaultCancelGrace
	}
	return c
}

// Runtime is the criu backend. Its methods are safe for concurrent use on
// different workloads.
type Runtime struct {
	cfg         Config
	log         *slog.Logger
	criuVersion int
	memTrack    bool     // CRIU can track dirty memory (pre-dump works)
	swrkPath    string   // criu in a session of its own (sessionWrapper)
	pre         predumps // pre-dumps the next Dump builds on, by workload
	ended       endedSet // containers their Dump ended (TCP connections)
	restores    sync.Map // workload ID → *RestoreStats of its last restore
	stagingOnce sync.Once
}

var (
	_ hypervisors.Backend     = (*Runtime)(nil)
	_ hypervisors.Preflighter = (*Runtime)(nil)
)

func init() {
	hypervisors.Register(hypervisors.Registration{
		Name:   Name,
		Config: func() any { return &Config{} },
		Flags: []hypervisors.Flag{
			{Name: "runc-root", Key: "runc_root", Usage: "runc --root of the containers to suspend (default /run/runc)"},
			{Name: "process-tree", Key: "process_trees", List: true, Usage: "cgroup path or glob of a plain process tree (repeatable)"},
		},
		Init: func(ctx context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(ctx, *ic.Config.(*Config), ic.Logger)
		},
	})
}

// New checks the host (CRIU version, runc present) and returns the
// backend, or an error wrapping hypervisors.ErrSkipBackend saying why this
// host cannot run it.
func New(_ context.Context, cfg Config, log *slog.Logger) (*Runtime, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	criuPath, err := exec.LookPath(cfg.CRIU)
	if err != nil {
		return nil, fmt.Errorf("%w: criu not found: %v", hypervisors.ErrSkipBackend, err)
	}
	cfg.CRIU = criuPath
	for pat, opts := range cfg.Options {
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("criu options for %q: %w", pat, err)
		}
		for _, o := range opts {
			if err := validOption(o); err != nil {
				return nil, fmt.Errorf("criu options for %q: %w", pat, err)
			}
		}
	}
	if cfg.Runc, err = exec.LookPath(cfg.Runc); err != nil {
		return nil, fmt.Errorf("%w: runc not found: %v", hypervisors.ErrSkipBackend, err)
	}
	c := gocriu.MakeCriu()
	c.SetCriuPath(criuPath)
	v, err := c.GetCriuVersion()
	if err != nil {
		return nil, fmt.Errorf("%w: criu %s does not answer: %v", hypervisors.ErrSkipBackend, criuPath, err)
	}
	if v < MinCRIU {
		return nil, fmt.Errorf("%w: criu %d.%d.%d is older than 4.2 (hack/setup.sh shows how to install 4.2.1 on Debian 12)", hypervisors.ErrSkipBackend, v/10000, v/100%100, v%100)
	}
	for _, d := range []string{cfg.WorkDir, cfg.LogDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	c = gocriu.MakeCriu() // one swrk per request
	c.SetCriuPath(criuPath)
	feat, err := c.FeatureCheck(&rpc.CriuFeatures{MemTrack: proto.Bool(true)})
	// CRIU 4.2.1's RPC answer said mem_track=true on a kernel without
	// CONFIG_MEM_SOFT_DIRTY, where "criu check" (and runc) say tracking is
	// off; require both.
	memTrack := err == nil && feat.GetMemTrack() &&
		exec.Command(criuPath, "check", "--feature", "mem_dirty_track").Run() == nil
	if !memTrack {
		log.Debug("CRIU cannot track dirty memory here (kernel without CONFIG_MEM_SOFT_DIRTY?): no pre-dump")
	}
	swrk, err := sessionWrapper(swrkDirs, criuPath)
	if err != nil {
		return nil, err
	}
	if swrk == criuPath {
		log.Debug("criu swrk runs in ckpt's session (no setsid, or no directory that allows executables)")
	}
	return &Runtime{cfg: cfg, log: log, criuVersion: v, memTrack: memTrack, swrkPath: swrk}, nil
}

// swrkDirs may hold the session wrapper, in order: the first that allows
// executables is used. Debian mounts /run noexec, hence the second. Not
// WorkDir, where a tmpfs may be mounted over it (mountStaging).
var swrkDirs = []string{"/run/ckpt", "/var/lib/ckpt"}

// sessionWrapper writes a script into the first of dirs whose filesystem
// allows executables; the script runs criu in a session of its own
// (setsid). It returns its path: go-criu starts "criu swrk" in the
// caller's session, and a process tree CRIU restores as a shell job joins
// CRIU's session. The caller's may have its leader outside this pid
// namespace (a service or CI runner entered with unshare or nsenter): the
// tree would then have session 0, which its next dump refuses ("A session
// leader … is outside of its pid namespace"). Without setsid(1), or with
// every dir noexec, it returns criu itself.
func sessionWrapper(dirs []string, criu string) (string, error) {
	setsid, err := exec.LookPath("setsid")
	if err != nil {
		return criu, nil
	}
	script := "#!/bin/sh\n# written by ckpt: criu swrk in a session of its own\nexec " + shQuote(setsid) + " " + shQuote(criu) + " \"$@\"\n"
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("criu session wrapper: %w", err)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil || fs.Flags&unix.ST_NOEXEC != 0 {
			continue
		}
		// One per criu binary: backends with different CRIUs do not clobber.
		path := filepath.Join(dir, fmt.Sprintf("criu-swrk-%08x", crc32.ChecksumIEEE([]byte(criu))))
		if b, err := os.ReadFile(path); err == nil && string(b) == script {
			return path, nil
		}
		if err := atomicfile.Write(path, []byte(script), 0o700); err != nil {
			return "", fmt.Errorf("criu session wrapper: %w", err)
		}
		return path, nil
	}
	return criu, nil
}

// Name implements hypervisors.Backend.
func (r *Runtime) Name() string { return Name }

// CRIUVersion is CRIU's version as major*10000+minor*100+sub.
func (r *Runtime) CRIUVersion() int { return r.criuVersion }

// CanPreDump reports whether CRIU can track dirty memory on this kernel,
// which pre-dump needs (CONFIG_MEM_SOFT_DIRTY).
func (r *Runtime) CanPreDump() bool { return r.memTrack }

func (r *Runtime) stage(id, what string) (string, error) {
	if err := os.MkdirAll(r.cfg.WorkDir, 0o700); err != nil {
		return "", err
	}
	r.stagingOnce.Do(func() { r.mountStaging() })
	return os.MkdirTemp(r.cfg.WorkDir, filepath.Base(id)+"-"+what+"-")
}

// mountStaging gives the staging directory a tmpfs of its own when it is
// on the host's /run, whose tmpfs is capped at a tenth of RAM: images
// staged for a raw region are as large as the workload's memory (a 256
// MiB container failed its dump with ENOSPC in a 3 GiB host). The mount
// costs nothing until written; it is gone with the boot.
func (r *Runtime) mountStaging() {
	if !r.cfg.defaultWorkDir {
		return // the caller's directory: leave it as it is
	}
	var st, parent unix.Stat_t
	var fs unix.Statfs_t
	if unix.Stat(r.cfg.WorkDir, &st) != nil || unix.Stat(filepath.Dir(r.cfg.WorkDir), &parent) != nil ||
		unix.Statfs(r.cfg.WorkDir, &fs) != nil {
		return
	}
	if st.Dev != parent.Dev || fs.Type != unix.TMPFS_MAGIC {
		return // a mount of its own already, or on disk
	}
	if ents, err := os.ReadDir(r.cfg.WorkDir); err != nil || len(ents) > 0 {
		return // never hide images staged before
	}
	if err := unix.Mount("ckpt-staging", r.cfg.WorkDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0700,size=100%"); err != nil {
		r.log.Warn("staging stays on the shared tmpfs", "dir", r.cfg.WorkDir, "err", err)
	}
}

var _ hypervisors.Stager = (*Runtime)(nil)

// StagingBytes implements hypervisors.Stager: where the region takes no
// files in place, CRIU's images are staged in the staging tmpfs, as large
// as the dump.
func (r *Runtime) StagingBytes(_ hypervisors.Workload, estimate int64, direct bool) int64 {
	if direct {
		return 0
	}
	return estimate
}
