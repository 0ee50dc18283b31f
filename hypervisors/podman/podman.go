// Package podman suspends the containers and pods of root's podman with
// podman's own checkpoint and restore, so that podman keeps managing
// them: afterwards podman ps lists each container running under its name
// and ID, and podman logs, exec and stop work.
//
// Debian 12's podman (4.3) checkpoints through runc (its crun has no
// CRIU), into the container's own directory under /var/lib/containers
// (disk), and restores a container in place from there, even after a
// reboot reset podman's run-time state on /run. So the backend:
//
//   - freezes each container through its cgroup (podman refuses to
//     checkpoint a container it paused itself, and does not notice a
//     cgroup freeze);
//   - dumps with podman container checkpoint --keep, which ends the
//     container, so the dump journals a rescue first, and copies the
//     images (and podman's /dev/shm and network files) into the region;
//   - restores by putting them back and running podman container restore.
//
// A pod is one workload: its members are checkpointed before its infra
// container and restored after it. podman 4.3 restores a pod member in
// place with the namespace paths of the infra container's old process
// (/proc/PID/ns/net): the backend points them at the restored one first,
// as podman does itself for a restore into a pod (--import --pod).
//
// Rootless podman cannot checkpoint at all ("checkpointing a container
// requires root"): Discover lists the rootless containers it finds, and
// Preflight refuses them with the reason and what to do.
package podman

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// Name is the backend's registered name.
const Name = "podman"

// Workload kinds.
const (
	KindContainer = "container"
	KindPod       = "pod"
)

// PodPrefix starts the ID of a pod's workload ("pod:web"): podman's names
// have no colon, so a pod's ID never meets a container's.
const PodPrefix = "pod:"

// rootlessPrefix starts the ID of a rootless user's container
// ("rootless:1000:web"), which preflight refuses.
const rootlessPrefix = "rootless:"

// Config configures the backend; zero values mean defaults.
type Config struct {
	// Podman is the podman binary (default podman, from PATH).
	Podman string `json:"podman"`
	// Containers are the names (path.Match globs) of the containers that
	// are not in a pod to suspend; Pods the names of the pods. Both empty
	// mean everything running; one set alone selects only what it names.
	Containers []string `json:"containers"`
	Pods       []string `json:"pods"`
	// ProcRoot is where the processes are listed (default /proc), to find
	// rootless users' containers.
	ProcRoot string `json:"proc_root"`
}

func (c Config) withDefaults() Config {
	if c.Podman == "" {
		c.Podman = "podman"
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	return c
}

// Backend is the podman backend. Its methods are safe for concurrent use
// on different workloads.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	bin     string
	version string

	mu    sync.Mutex
	state map[string]*unitState // by workload ID
}

// unitState is what this process did to a workload's containers between
// Freeze and Finish or Thaw.
type unitState struct {
	frozen map[string]*freezer.Cgroup // container ID → the cgroup Freeze froze
	// ended are the members Dump's checkpoints ended, in dump order; a
	// rollback restores them from their checkpoint directories.
	ended []member
}

// member is one container of a workload, as the recipe and the rescue
// record keep it.
type member struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Infra  bool   `json:"infra,omitempty"`
	PID    int    `json:"pid"`        // its process at the dump, whose /proc/PID/ns the pod's members name
	Static string `json:"static_dir"` // podman's directory for it (userdata)
}

var (
	_ hypervisors.Backend     = (*Backend)(nil)
	_ hypervisors.Preflighter = (*Backend)(nil)
	_ hypervisors.Reviver     = (*Backend)(nil)
)

func init() {
	hypervisors.Register(hypervisors.Registration{
		Name:   Name,
		Config: func() any { return &Config{} },
		Flags: []hypervisors.Flag{
			{Name: "podman-container", Key: "containers", List: true, Usage: "podman container name or glob to suspend, outside pods (repeatable; default everything running)"},
			{Name: "podman-pod", Key: "pods", List: true, Usage: "podman pod name or glob to suspend as a unit (repeatable; default everything running)"},
		},
		Init: func(ctx context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(ctx, *ic.Config.(*Config), ic.Logger)
		},
	})
}

// New finds podman, or returns an error wrapping hypervisors.ErrSkipBackend
// where it is not installed.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := hypervisors.CheckGlobs("podman containers or pods", append(slices.Clone(cfg.Containers), cfg.Pods...)); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(cfg.Podman)
	if err != nil {
		return nil, fmt.Errorf("%w: podman is not installed (%v)", hypervisors.ErrSkipBackend, err)
	}
	b := &Backend{cfg: cfg, log: log, bin: bin, state: map[string]*unitState{}}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := b.podman(vctx, "version", "--format", "{{.Client.Version}}")
	if err != nil {
		return nil, fmt.Errorf("%w: %s does not run: %v", hypervisors.ErrSkipBackend, bin, err)
	}
	b.version = strings.TrimSpace(string(out))
	return b, nil
}

// Name implements hypervisors.Backend.
func (b *Backend) Name() string { return Name }

// Version is podman's version.
func (b *Backend) Version() string { return b.version }

// podman runs the podman CLI and returns its stdout; a failure carries
// its stderr.
func (b *Backend) podman(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, b.bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(msg, "\n"); i >= 0 && strings.Contains(msg[i:], "Error:") {
			msg = msg[i+1:] // podman's own error follows its warnings
		}
		return out, fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// container is the part of podman inspect the backend reads.
type container struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State struct {
		Status string `json:"Status"`
		Pid    int    `json:"Pid"`
	} `json:"State"`
	Pod          string   `json:"Pod"`
	IsInfra      bool     `json:"IsInfra"`
	StaticDir    string   `json:"StaticDir"`
	OCIRuntime   string   `json:"OCIRuntime"`
	Dependencies []string `json:"Dependencies"`
	Config       struct {
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	HostConfig struct {
		AutoRemove bool `json:"AutoRemove"`
	} `json:"HostConfig"`
}

var errNoSuchContainer = errors.New("no such container")

// inspect inspects containers by name or ID, in that order.
func (b *Backend) inspect(ctx context.Context, names ...string) ([]container, error) {
	out, err := b.podman(ctx, append([]string{"container", "inspect", "--format", "json"}, names...)...)
	var cs []container
	if jerr := json.Unmarshal(out, &cs); jerr != nil || err != nil {
		if err != nil && strings.Contains(err.Error(), "no such container") {
			return nil, fmt.Errorf("%w: podman container %s: %w", hypervisors.ErrNotFound, strings.Join(names, ", "), errNoSuchContainer)
		}
		if err == nil {
			err = jerr
		}
		return nil, err
	}
	if len(cs) != len(names) {
		return nil, fmt.Errorf("podman inspect %s: %d answers", strings.Join(names, " "), len(cs))
	}
	return cs, nil
}

func (b *Backend) inspectOne(ctx context.Context, name string) (*container, error) {
	cs, err := b.inspect(ctx, name)
	if err != nil {
		return nil, err
	}
	return &cs[0], nil
}

// psEntry is a line of podman ps --format json.
type psEntry struct {
	ID      string   `json:"Id"`
	Names   []string `json:"Names"`
	Pid     int      `json:"Pid"`
	Pod     string   `json:"Pod"`
	PodName string   `json:"PodName"`
	IsInfra bool     `json:"IsInfra"`
	State   string   `json:"State"`
}

// Discover implements hypervisors.Backend: root's running containers
// outside pods, its pods with a running container, and the containers of
// rootless users (which preflight refuses).
func (b *Backend) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	out, err := b.podman(ctx, "ps", "--pod", "--format", "json") // --pod fills PodName
	if err != nil {
		return nil, fmt.Errorf("listing podman containers: %w", err)
	}
	var ps []psEntry
	if err := json.Unmarshal(out, &ps); err != nil {
		return nil, fmt.Errorf("podman ps: %w", err)
	}
	all := len(b.cfg.Containers) == 0 && len(b.cfg.Pods) == 0
	var ws []hypervisors.Workload
	pods := map[string]*hypervisors.Workload{}
	for _, p := range ps {
		if len(p.Names) == 0 {
			continue
		}
		name := p.Names[0]
		if p.Pod == "" {
			if all || hypervisors.MatchGlobs(b.cfg.Containers, name) {
				ws = append(ws, hypervisors.Workload{ID: name, Kind: KindContainer, Backend: Name, PID: p.Pid,
					MemoryBytes: freezer.MemoryOfPID(p.Pid), Attrs: map[string]string{"id": p.ID, "manager": "podman"}})
			}
			continue
		}
		if !all && !hypervisors.MatchGlobs(b.cfg.Pods, p.PodName) {
			continue
		}
		w := pods[p.Pod]
		if w == nil {
			ws = append(ws, hypervisors.Workload{ID: PodPrefix + p.PodName, Kind: KindPod, Backend: Name,
				Attrs: map[string]string{"id": p.Pod, "manager": "podman"}})
			w = &ws[len(ws)-1]
			pods[p.Pod] = w
		}
		w.MemoryBytes += freezer.MemoryOfPID(p.Pid)
		if p.IsInfra {
			w.PID = p.Pid
		}
		w.Attrs["containers"] = strings.TrimPrefix(w.Attrs["containers"]+","+name, ",")
	}
	// ws grew while pods pointed into it: take the pods' fields again.
	for i := range ws {
		if ws[i].Kind == KindPod {
			ws[i] = *pods[ws[i].Attrs["id"]]
		}
	}
	for _, r := range b.rootless() {
		if all || hypervisors.MatchGlobs(b.cfg.Containers, r.ID) {
			ws = append(ws, r)
		}
	}
	return ws, nil
}

// rootless finds the containers of rootless podman: each runs under a
// conmon of its user, whose command line names the container.
func (b *Backend) rootless() []hypervisors.Workload {
	ents, err := os.ReadDir(b.cfg.ProcRoot)
	if err != nil {
		return nil
	}
	var ws []hypervisors.Workload
	for _, e := range ents {
		dir := filepath.Join(b.cfg.ProcRoot, e.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "conmon" {
			continue
		}
		uid := procUID(dir)
		if uid <= 0 {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		name, id := flagValue(args, "-n", "--name"), flagValue(args, "-c", "--cid")
		if name == "" || id == "" {
			continue
		}
		ws = append(ws, hypervisors.Workload{ID: fmt.Sprintf("%s%d:%s", rootlessPrefix, uid, name), Kind: KindContainer, Backend: Name,
			Attrs: map[string]string{"id": id, "manager": "podman", "rootless_uid": fmt.Sprint(uid)}})
	}
	return ws
}

// procUID is the real uid of the process at dir, -1 where unknown.
func procUID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			var uid int
			if _, err := fmt.Sscan(v, &uid); err == nil {
				return uid
			}
		}
	}
	return -1
}

// flagValue is the value of a flag given as "-f v", "--flag v" or
// "--flag=v".
func flagValue(args []string, short, long string) string {
	for i, a := range args {
		if (a == short || a == long) && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, long+"="); ok {
			return v
		}
	}
	return ""
}

// members inspects a workload's running containers: a pod's in dump
// order (members, then the infra container last), or the one container.
func (b *Backend) members(ctx context.Context, w hypervisors.Workload) ([]container, error) {
	if strings.HasPrefix(w.ID, rootlessPrefix) {
		return nil, rootlessErr(w)
	}
	name, isPod := strings.CutPrefix(w.ID, PodPrefix)
	if !isPod {
		c, err := b.inspectOne(ctx, w.ID)
		if err != nil {
			return nil, err
		}
		return []container{*c}, nil
	}
	out, err := b.podman(ctx, "pod", "inspect", name)
	if err != nil {
		if strings.Contains(err.Error(), "no such pod") {
			return nil, fmt.Errorf("%w: podman pod %s", hypervisors.ErrNotFound, name)
		}
		return nil, err
	}
	var pod struct {
		Containers []struct {
			ID string `json:"Id"`
		} `json:"Containers"`
	}
	if err := json.Unmarshal(out, &pod); err != nil {
		return nil, fmt.Errorf("podman pod inspect %s: %w", name, err)
	}
	var ids []string
	for _, c := range pod.Containers {
		ids = append(ids, c.ID)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: podman pod %s has no containers", hypervisors.ErrNotFound, name)
	}
	cs, err := b.inspect(ctx, ids...)
	if err != nil {
		return nil, err
	}
	// Members first, the infra container (whose namespaces they share)
	// last; each group by name, for a stable order.
	slices.SortFunc(cs, func(x, y container) int {
		if x.IsInfra != y.IsInfra {
			if x.IsInfra {
				return 1
			}
			return -1
		}
		return strings.Compare(x.Name, y.Name)
	})
	return cs, nil
}

func rootlessErr(w hypervisors.Workload) error {
	uid := w.Attrs["rootless_uid"]
	if uid == "" {
		uid, _, _ = strings.Cut(strings.TrimPrefix(w.ID, rootlessPrefix), ":")
	}
	return fmt.Errorf("%w: podman container %s runs rootless (uid %s), and podman checkpoints and restores only root's containers (\"checkpointing a container requires root\"): stop it before the update and start it after (as that user: podman stop, or systemctl --user stop its unit), or run it under root's podman",
		hypervisors.ErrNotCheckpointable, w.ID, uid)
}

func (b *Backend) stateOf(id string) *unitState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state[id]
	if s == nil {
		s = &unitState{frozen: map[string]*freezer.Cgroup{}}
		b.state[id] = s
	}
	return s
}

func (b *Backend) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.state, id)
}

// Preflight implements hypervisors.Preflighter.
func (b *Backend) Preflight(ctx context.Context, w hypervisors.Workload) error {
	cs, err := b.members(ctx, w)
	if err != nil {
		return err
	}
	inPod := strings.HasPrefix(w.ID, PodPrefix)
	running := 0
	for _, c := range cs {
		switch c.State.Status {
		case "running":
			running++
		case "paused":
			return fmt.Errorf("%w: podman container %s is paused, and podman checkpoints only running containers: podman unpause it, or leave it out with --only",
				hypervisors.ErrNotCheckpointable, c.Name)
		default:
			continue // an exited member of a pod stays as it is
		}
		if c.HostConfig.AutoRemove {
			return fmt.Errorf("%w: podman container %s was started with --rm: the end of its checkpoint would remove it; start it without --rm, or leave it out with --only",
				hypervisors.ErrNotCheckpointable, c.Name)
		}
		if rt := filepath.Base(c.OCIRuntime); rt != "runc" {
			return fmt.Errorf("%w: podman container %s runs under %s, and only runc can checkpoint it on this system (Debian's crun is built without CRIU): set runtime = \"runc\" in the [engine] table of /etc/containers/containers.conf and recreate the container, or leave it out with --only",
				hypervisors.ErrNotCheckpointable, c.Name, c.OCIRuntime)
		}
		if unit := c.Config.Labels["PODMAN_SYSTEMD_UNIT"]; unit != "" {
			return fmt.Errorf("%w: podman container %s is run by the systemd unit %s: when its checkpoint ended the container, the unit would stop and remove it; stop the unit before the update (systemctl stop %s) and start it after, or leave it out with --only",
				hypervisors.ErrNotCheckpointable, c.Name, unit, unit)
		}
		if !inPod && len(c.Dependencies) > 0 {
			return fmt.Errorf("%w: podman container %s shares namespaces with container %s outside a pod: ckpt restores such groups only as pods; put them in a pod, or leave them out with --only",
				hypervisors.ErrNotCheckpointable, c.Name, strings.Join(c.Dependencies, ", "))
		}
	}
	if running == 0 {
		return fmt.Errorf("%w: podman %s runs no container", hypervisors.ErrNotCheckpointable, w.ID)
	}
	return nil
}

// Freeze implements hypervisors.Backend: each running container's cgroup
// is frozen, behind podman's back (see the package doc).
func (b *Backend) Freeze(ctx context.Context, w hypervisors.Workload) error {
	cs, err := b.members(ctx, w)
	if err != nil {
		return err
	}
	s := b.stateOf(w.ID)
	for _, c := range cs {
		if c.State.Status != "running" || s.frozen[c.ID] != nil {
			continue
		}
		cg, err := freezer.OfPID(c.State.Pid)
		if err != nil {
			return fmt.Errorf("podman container %s: %w", c.Name, err)
		}
		// Marked first: Thaw undoes a freeze that was cut short.
		s.frozen[c.ID] = cg
		if err := cg.Freeze(ctx); err != nil {
			return fmt.Errorf("freezing podman container %s: %w", c.Name, err)
		}
	}
	return nil
}

// thawGrace bounds the wait for a CRIU that still holds a container's
// tasks when it is thawed.
const thawGrace = 2 * time.Minute

// detached is a context for undoing: it outlives the caller's.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
}

// Thaw implements hypervisors.Backend. Containers that still run are
// thawed; those Dump's checkpoint ended are restored from it (a pod's
// infra container first).
func (b *Backend) Thaw(ctx context.Context, w hypervisors.Workload) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	s := b.stateOf(w.ID)
	if len(s.frozen) == 0 && len(s.ended) == 0 {
		// Another process froze or checkpointed it (a resume on the
		// suspend's own boot): thaw what is still there, frozen; a
		// workload whose containers all ended is not found, to be
		// restored.
		cs, err := b.members(ctx, w)
		if err != nil {
			b.forget(w.ID)
			return err
		}
		running := 0
		for _, c := range cs {
			if c.State.Status != "running" {
				continue
			}
			running++
			if cg, err := freezer.OfPID(c.State.Pid); err == nil {
				if frozen, _ := cg.Frozen(); frozen {
					s.frozen[c.ID] = cg
				}
			}
		}
		if running == 0 {
			b.forget(w.ID)
			return fmt.Errorf("%w: podman %s runs no container, and this process checkpointed none of it", hypervisors.ErrNotFound, w.ID)
		}
	}
	var errs []error
	for id, cg := range s.frozen {
		if slices.ContainsFunc(s.ended, func(m member) bool { return m.ID == id }) {
			continue
		}
		if err := cg.ThawVerified(ctx, thawGrace); err != nil && freezer.Exists(cgroupPath(cg)) {
			errs = append(errs, fmt.Errorf("thawing podman container %s: %w", id[:12], err))
			continue
		}
		delete(s.frozen, id)
	}
	if len(s.ended) > 0 {
		if err := b.restoreMembers(ctx, s.ended, nil); err != nil {
			errs = append(errs, err)
		} else {
			s.ended = nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	b.forget(w.ID)
	return nil
}

// cgroupPath is cg's path below the hierarchy roots.
func cgroupPath(cg *freezer.Cgroup) string {
	dir := cg.Dir()
	if rel, err := filepath.Rel(filepath.Join(freezer.Root, "freezer"), dir); err == nil && !strings.HasPrefix(rel, "..") {
		return "/" + rel
	}
	rel, _ := filepath.Rel(freezer.Root, dir)
	return "/" + rel
}

// recipe is what Restore needs.
type recipe struct {
	Members []storedMember `json:"members"` // in dump order
	Bytes   int64          `json:"bytes"`
	Podman  string         `json:"podman"`
}

type storedMember struct {
	member
	Images []string `json:"images"` // region objects of <static>/checkpoint
	Extra  []string `json:"extra"`  // of the files beside it (podman's /dev/shm tar, network status)
}

// rescue is the record Dump journals before its checkpoints end the
// containers.
type rescue struct {
	Members []member `json:"members"`
}

// extraFiles are the files beside <static>/checkpoint that podman's
// checkpoint writes and its restore reads.
var extraFiles = []string{"devshm-checkpoint.tar", "network.status"}

// Dump implements hypervisors.Backend: podman checkpoints each frozen
// container (a pod's infra container last), which ends it, and the images
// are copied into dst. Thaw brings the containers back.
func (b *Backend) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	cs, err := b.members(ctx, w)
	if err != nil {
		return nil, err
	}
	s := b.stateOf(w.ID)
	var ms []member
	for _, c := range cs {
		if c.State.Status != "running" {
			continue
		}
		if s.frozen[c.ID] == nil {
			return nil, fmt.Errorf("podman container %s is not frozen", c.Name)
		}
		ms = append(ms, member{ID: c.ID, Name: c.Name, Infra: c.IsInfra, PID: c.State.Pid, Static: c.StaticDir})
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%w: podman %s runs no container", hypervisors.ErrNotFound, w.ID)
	}
	// The checkpoints end the containers: say how to bring them back first.
	resc, _ := json.Marshal(rescue{Members: ms})
	if err := hypervisors.RecordRescue(dst, resc); err != nil {
		return nil, err
	}
	rec := recipe{Podman: b.version}
	for _, m := range ms {
		// Not cut short by ctx once begun: podman would go on and end the
		// container after Dump returned. Dump returns when it is over.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Minute)
		_, err := b.podman(cctx, "container", "checkpoint", "--keep", "--tcp-established", "--file-locks", m.ID)
		cancel()
		if err != nil {
			// podman may have ended it anyway: Thaw looks at both.
			if c, ierr := b.inspectOne(context.WithoutCancel(ctx), m.ID); ierr == nil && c.State.Status != "running" && hasCheckpoint(m.Static) {
				s.ended = append(s.ended, m)
			}
			return nil, fmt.Errorf("podman checkpoint of %s: %w", m.Name, err)
		}
		s.ended = append(s.ended, m)
	}
	for _, m := range ms {
		prefix := m.Name + "/"
		sm := storedMember{member: m}
		var n int64
		sm.Images, n, err = hypervisors.StoreDir(ctx, filepath.Join(m.Static, "checkpoint"), prefix+"images/", dst)
		if err != nil {
			return nil, fmt.Errorf("storing the checkpoint of %s: %w", m.Name, err)
		}
		rec.Bytes += n
		for _, f := range extraFiles {
			p := filepath.Join(m.Static, f)
			info, err := os.Stat(p)
			if err != nil {
				continue
			}
			if n, err = hypervisors.StoreFile(p, prefix+f, info.Size(), dst); err != nil {
				return nil, fmt.Errorf("storing %s of %s: %w", f, m.Name, err)
			}
			sm.Extra = append(sm.Extra, prefix+f)
			rec.Bytes += n
		}
		rec.Members = append(rec.Members, sm)
	}
	return json.Marshal(rec)
}

func hasCheckpoint(static string) bool {
	_, err := os.Stat(filepath.Join(static, "checkpoint", "inventory.img"))
	return err == nil
}

// restoreMembers restores members (in dump order) with podman container
// restore from their checkpoint directories, the infra container first;
// load, when set, first puts each member's images there.
func (b *Backend) restoreMembers(ctx context.Context, ms []member, load func(m member) error) error {
	order := slices.Clone(ms)
	slices.Reverse(order)     // the infra container was dumped last
	infraPID := map[int]int{} // its PID at the dump → now
	for _, m := range order {
		c, err := b.inspectOne(ctx, m.ID)
		if err != nil {
			return fmt.Errorf("podman container %s (%s) is gone from podman, which restores only a container it still knows: %w", m.Name, m.ID[:12], err)
		}
		if c.State.Status == "running" {
			// A repeated rollback finds what it restored running. At a
			// resume, a running member was started afresh by someone
			// else: not restored over, and not taken for restored. A
			// running infra container (a pause process) serves either way.
			if load != nil && !m.Infra {
				return fmt.Errorf("podman container %s is already running (started afresh?): not restoring over it", m.Name)
			}
			if m.Infra {
				infraPID[m.PID] = c.State.Pid
			}
			continue
		}
		if load != nil {
			if err := load(m); err != nil {
				return err
			}
		}
		if !m.Infra && len(infraPID) > 0 {
			if err := repointNamespaces(filepath.Join(m.Static, "config.json"), infraPID); err != nil {
				return fmt.Errorf("podman container %s: %w", m.Name, err)
			}
		}
		restoring := hypervisors.CRIURestoring()
		_, err = b.podman(ctx, "container", "restore", "--tcp-established", "--file-locks", m.ID)
		restoring()
		if err != nil {
			return fmt.Errorf("podman restore of %s: %w", m.Name, err)
		}
		if m.Infra {
			r, err := b.inspectOne(ctx, m.ID)
			if err != nil {
				return err
			}
			infraPID[m.PID] = r.State.Pid
		}
	}
	return nil
}

var nsPath = regexp.MustCompile(`^/proc/([0-9]+)/ns/([a-z_]+)$`)

// repointNamespaces rewrites the namespace paths in an OCI config that
// name the old processes in pids (/proc/OLD/ns/net) to the new ones. It
// keeps every other field, numbers exactly.
func repointNamespaces(file string, pids map[int]int) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var spec map[string]any
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	linux, _ := spec["linux"].(map[string]any)
	nss, _ := linux["namespaces"].([]any)
	changed := false
	for _, n := range nss {
		ns, _ := n.(map[string]any)
		p, _ := ns["path"].(string)
		m := nsPath.FindStringSubmatch(p)
		if m == nil {
			continue
		}
		var old int
		fmt.Sscan(m[1], &old)
		if now, ok := pids[old]; ok && now != old {
			ns["path"] = fmt.Sprintf("/proc/%d/ns/%s", now, m[2])
			changed = true
		}
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	tmp := file + ".ckpt"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// Finish implements hypervisors.Backend. The checkpoints already ended
// the containers. Their images stay on disk, in podman's own place,
// until the resume: after a cold boot that lost the region, podman
// container restore NAME still brings each back.
func (b *Backend) Finish(ctx context.Context, w hypervisors.Workload) error {
	s := b.stateOf(w.ID)
	ended := s.ended
	b.forget(w.ID)
	for _, m := range ended {
		c, err := b.inspectOne(ctx, m.ID)
		if errors.Is(err, hypervisors.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if c.State.Status == "running" {
			return fmt.Errorf("podman container %s runs again after its checkpoint: someone started it", m.Name)
		}
	}
	return nil
}

// Restore implements hypervisors.Backend: the images go from the region
// back into each container's checkpoint directory, and podman restores
// the containers from there, a pod's infra container first.
func (b *Backend) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("podman recipe of %s: %w", w.ID, err)
	}
	if len(rec.Members) == 0 {
		return fmt.Errorf("podman recipe of %s: no containers", w.ID)
	}
	stored := map[string]storedMember{}
	var ms []member
	for _, sm := range rec.Members {
		if sm.ID == "" || sm.Static == "" || len(sm.Images) == 0 {
			return fmt.Errorf("podman recipe of %s: container %q without its directory or images", w.ID, sm.Name)
		}
		stored[sm.ID] = sm
		ms = append(ms, sm.member)
	}
	return b.restoreMembers(ctx, ms, func(m member) error {
		sm := stored[m.ID]
		cp := filepath.Join(m.Static, "checkpoint")
		if err := os.RemoveAll(cp); err != nil {
			return err
		}
		if err := hypervisors.LoadDir(src, sm.Images, m.Name+"/images/", cp); err != nil {
			os.RemoveAll(cp)
			return fmt.Errorf("reading the checkpoint of %s from the region: %w", m.Name, err)
		}
		for _, name := range sm.Extra {
			if err := hypervisors.LoadFile(src, name, filepath.Join(m.Static, path.Base(name))); err != nil {
				return fmt.Errorf("reading the checkpoint of %s from the region: %w", m.Name, err)
			}
		}
		return nil
	})
}

// Revive implements hypervisors.Reviver: after a crash, the containers
// still running are thawed; those a checkpoint ended are restored from
// it.
func (b *Backend) Revive(ctx context.Context, w hypervisors.Workload, raw json.RawMessage) error {
	var r rescue
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("podman rescue of %s: %w", w.ID, err)
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	s := b.stateOf(w.ID)
	for _, m := range r.Members {
		c, err := b.inspectOne(ctx, m.ID)
		if err != nil {
			return err
		}
		switch {
		case c.State.Status == "running" || c.State.Status == "paused":
			if cg, err := freezer.OfPID(c.State.Pid); err == nil {
				s.frozen[m.ID] = cg
			}
		case hasCheckpoint(m.Static):
			s.ended = append(s.ended, m)
		}
	}
	return b.Thaw(ctx, w)
}
