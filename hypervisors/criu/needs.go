package criu

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// defaultGhostLimit is CRIU's own limit on the size of an open unlinked
// file it copies into the images (--ghost-limit).
const defaultGhostLimit = 1 << 20

// criuNeeds is what CRIU must be told about a workload's processes for a
// dump and its restore, found by looking at them (and Config.Options).
type criuNeeds struct {
	FileLocks  bool     `json:"file_locks,omitempty"`  // they hold file locks
	LinkRemap  bool     `json:"link_remap,omitempty"`  // an open file's name is gone, another hard link stays
	GhostLimit int64    `json:"ghost_limit,omitempty"` // an open unlinked file is larger than CRIU's default limit
	Options    []string `json:"options,omitempty"`     // the operator's, from the config
}

// needsOf looks at pids' file locks and open files.
func needsOf(pids []int) criuNeeds {
	var n criuNeeds
	n.FileLocks = holdLocks(pids)
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			p := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
			l, err := os.Readlink(p)
			if err != nil || !strings.HasPrefix(l, "/") || !strings.HasSuffix(l, " (deleted)") {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue
			}
			if st.Nlink > 0 {
				n.LinkRemap = true
			} else if st.Size > defaultGhostLimit {
				n.GhostLimit = max(n.GhostLimit, st.Size+1)
			}
		}
	}
	return n
}

// holdLocks says whether one of pids holds (or waits for) a file lock.
func holdLocks(pids []int) bool {
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[1] == "->" {
			f = append(f[:1], f[2:]...)
		}
		if len(f) < 5 {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && slices.Contains(pids, pid) {
			return true
		}
	}
	return false
}

// withOptions adds the operator's CRIU options for workload id: those of
// every Config.Options pattern (path.Match) that matches it.
func (n criuNeeds) withOptions(opts map[string][]string, id string) criuNeeds {
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, pat := range keys {
		if ok, _ := path.Match(pat, id); ok {
			n.Options = append(n.Options, opts[pat]...)
		}
	}
	return n
}

// configLines are the CRIU configuration file lines for what runc has no
// flag for (runc checkpoint/restore take --file-locks themselves).
func (n criuNeeds) configLines() []string {
	var ls []string
	if n.LinkRemap {
		ls = append(ls, "link-remap")
	}
	if n.GhostLimit > 0 {
		ls = append(ls, fmt.Sprintf("ghost-limit %d", n.GhostLimit))
	}
	for _, o := range n.Options {
		ls = append(ls, strings.TrimPrefix(o, "--"))
	}
	return ls
}

// configEnv writes the CRIU configuration file for n into dir and returns
// the environment that makes the CRIU runc starts read it (CRIU reads
// CRIU_CONFIG_FILE in RPC mode too); nil when there is nothing to say.
func (n criuNeeds) configEnv(dir string) ([]string, error) {
	ls := n.configLines()
	if len(ls) == 0 {
		return nil, nil
	}
	p := filepath.Join(dir, "criu.conf")
	if err := os.WriteFile(p, []byte(strings.Join(ls, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	return append(os.Environ(), "CRIU_CONFIG_FILE="+p), nil
}

// validOption refuses an operator option that would break ckpt's own use
// of CRIU: where images go, what happens to the workload, how CRIU is
// driven.
func validOption(o string) error {
	name, _, _ := strings.Cut(strings.TrimPrefix(o, "--"), " ")
	name, _, _ = strings.Cut(name, "=")
	switch name {
	case "images-dir", "work-dir", "D", "W", "leave-running", "leave-stopped", "R", "s", "tree", "t",
		"freeze-cgroup", "pidfile", "log-file", "o", "restore-detached", "d", "config", "action-script", "exec-cmd", "prev-images-dir", "track-mem":
		return fmt.Errorf("%w: the CRIU option %q is ckpt's to set", hypervisors.ErrNotCheckpointable, o)
	}
	return nil
}

// rpc sets n in a CRIU RPC request; the operator's options go in a
// configuration file in dir.
func (n criuNeeds) rpc(opts *rpc.CriuOpts, dir string) error {
	if n.FileLocks {
		opts.FileLocks = proto.Bool(true)
	}
	if n.LinkRemap {
		opts.LinkRemap = proto.Bool(true)
	}
	if n.GhostLimit > 0 {
		opts.GhostLimit = proto.Uint32(uint32(min(n.GhostLimit, 1<<32-1)))
	}
	if len(n.Options) == 0 {
		return nil
	}
	p := filepath.Join(dir, "criu.conf")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(strings.Join(criuNeeds{Options: n.Options}.configLines(), "\n")+"\n"), 0o600); err != nil {
		return err
	}
	opts.ConfigFile = proto.String(p)
	return nil
}

// endsWithDump says whether a dump must end the workload rather than
// leave it running: CRIU keeps established TCP connections only for a
// workload that is gone (their sockets are closed in repair mode), and
// deletes the link remaps it made when the workload lives on, which its
// restore needs.
func endsWithDump(conns []tcpConn, n criuNeeds) bool {
	return len(conns) > 0 || n.LinkRemap
}
