// Package containerd suspends the containers of containerd (started with
// ctr, nerdctl or a program on containerd's API) through containerd's own
// task API, so that containerd keeps managing them: afterwards ctr task ls
// lists each task running, and ctr task exec, kill and delete work.
//
// The backend speaks containerd's gRPC API (the generated client of
// github.com/containerd/containerd/api) rather than the client package
// github.com/containerd/containerd, whose module requires some eighty
// others (Kubernetes, CNI, OpenTelemetry, hcsshim) for the five calls
// used here. Debian 12's containerd is 1.6:
//
//   - Freeze pauses the task (containerd's own pause: ctr task ls says
//     PAUSED);
//   - Dump checkpoints it into the region (or a staging directory) with
//     CRIU's TCP and file-lock options, which ends it, and deletes the
//     ended task: a rescue record is journalled first;
//   - Restore creates and starts a new task of the same container from
//     the images (containerd runs runc restore), on the container's own
//     snapshot, with its own runtime options and standard streams.
//
// containerd 1.6 passes no CRIU options at restore. runc reads them from
// the CRIU configuration file named by the container's org.criu.config
// annotation, which the backend sets for the restore and takes back after.
//
// Namespaces: moby is Docker's (the docker backend's); k8s.io is
// kubelet's, whose containers preflight refuses, as kubelet would
// recreate their pods.
package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	ctrsapi "github.com/containerd/containerd/api/services/containers/v1"
	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// Name is the backend's registered name.
const Name = "containerd"

// KindContainer is the kind of its workloads.
const KindContainer = "container"

// Namespaces with a manager of their own.
const (
	// DockerNamespace is Docker's: its containers are the docker
	// backend's, and this one never lists them.
	DockerNamespace = "moby"
	// KubernetesNamespace is kubelet's (CRI): preflight refuses its
	// containers.
	KubernetesNamespace = "k8s.io"
)

// Type URLs of the runc shim's options, as containerd 1.6 resolves them
// (by exact name, not type.googleapis.com/…).
const (
	runcOptionsURL    = "containerd.runc.v1.Options"
	checkpointOptsURL = "containerd.runc.v1.CheckpointOptions"
	processDetailsURL = "containerd.runc.v1.ProcessDetails"
)

// criuConfigAnnotation names, in a container's spec, the CRIU
// configuration file runc uses for its checkpoint and restore.
const criuConfigAnnotation = "org.criu.config"

// Config configures the backend; zero values mean defaults.
type Config struct {
	// Address is containerd's socket (default
	// /run/containerd/containerd.sock).
	Address string `json:"address"`
	// Namespaces are the namespaces (path.Match globs) to look in
	// (default every one but moby, which is Docker's).
	Namespaces []string `json:"namespaces"`
	// Containers are the workloads to suspend, as NAMESPACE/ID globs
	// (default every running task).
	Containers []string `json:"containers"`
	// WorkDir holds the images where the region takes no files in place,
	// CRIU's work directories and configuration files (default
	// /run/ckpt/containerd).
	WorkDir string `json:"work_dir"`
}

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = "/run/containerd/containerd.sock"
	}
	if c.WorkDir == "" {
		c.WorkDir = "/run/ckpt/containerd"
	}
	return c
}

// Backend is the containerd backend. Its methods are safe for concurrent
// use on different workloads.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	conn    *grpc.ClientConn
	version string

	tasks  tasksapi.TasksClient
	ctrs   ctrsapi.ContainersClient
	snaps  snapsapi.SnapshotsClient
	spaces nsapi.NamespacesClient

	mu    sync.Mutex
	state map[string]*taskState // by workload ID
}

// taskState is what this process did to a workload between Freeze and
// Finish or Thaw.
type taskState struct {
	paused bool
	ended  *rescue // set once Dump's checkpoint may have ended the task
}

var (
	_ hypervisors.Backend     = (*Backend)(nil)
	_ hypervisors.Preflighter = (*Backend)(nil)
	_ hypervisors.Reviver     = (*Backend)(nil)
	_ hypervisors.Stager      = (*Backend)(nil)
)

func init() {
	hypervisors.Register(hypervisors.Registration{
		Name:   Name,
		Config: func() any { return &Config{} },
		Flags: []hypervisors.Flag{
			{Name: "containerd-address", Key: "address", Usage: "containerd's socket (default /run/containerd/containerd.sock)"},
			{Name: "containerd-namespace", Key: "namespaces", List: true, Usage: "containerd namespace (glob) to look in (repeatable; default all but moby, Docker's)"},
			{Name: "containerd-container", Key: "containers", List: true, Usage: "containerd container to suspend, as NAMESPACE/ID glob (repeatable; default every running task)"},
		},
		Init: func(ctx context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(ctx, *ic.Config.(*Config), ic.Logger)
		},
	})
}

// New connects to containerd, or returns an error wrapping
// hypervisors.ErrSkipBackend where it is not installed or not running.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := hypervisors.CheckGlobs("containerd namespaces or containers", append(append([]string(nil), cfg.Namespaces...), cfg.Containers...)); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Address); err != nil {
		return nil, fmt.Errorf("%w: containerd does not run here (%v)", hypervisors.ErrSkipBackend, err)
	}
	conn, err := grpc.NewClient("unix://"+cfg.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("%w: containerd at %s: %v", hypervisors.ErrSkipBackend, cfg.Address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := versionapi.NewVersionClient(conn).Version(vctx, &emptypb.Empty{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: containerd at %s does not answer: %v", hypervisors.ErrSkipBackend, cfg.Address, err)
	}
	return &Backend{cfg: cfg, log: log, conn: conn, version: v.Version,
		tasks: tasksapi.NewTasksClient(conn), ctrs: ctrsapi.NewContainersClient(conn),
		snaps: snapsapi.NewSnapshotsClient(conn), spaces: nsapi.NewNamespacesClient(conn),
		state: map[string]*taskState{}}, nil
}

// Name implements hypervisors.Backend.
func (b *Backend) Name() string { return Name }

// Version is containerd's version.
func (b *Backend) Version() string { return b.version }

// Close closes the connection to containerd.
func (b *Backend) Close() error { return b.conn.Close() }

// inNamespace is ctx with containerd's namespace header.
func inNamespace(ctx context.Context, ns string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", ns)
}

// split is a workload ID's namespace and container ID.
func split(w hypervisors.Workload) (ns, id string, err error) {
	ns, id, ok := strings.Cut(w.ID, "/")
	if !ok || ns == "" || id == "" {
		return "", "", fmt.Errorf("containerd workload %q: want NAMESPACE/ID", w.ID)
	}
	return ns, id, nil
}

// notFound wraps a NotFound answer in hypervisors.ErrNotFound; any other
// failure stays what it is, never "gone".
func notFound(err error, what string) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("%w: %s: %v", hypervisors.ErrNotFound, what, status.Convert(err).Message())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Discover implements hypervisors.Backend: the running and paused tasks
// of every namespace but Docker's (kubelet's are listed, for preflight to
// refuse them with the reason).
func (b *Backend) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	nl, err := b.spaces.List(ctx, &nsapi.ListNamespacesRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing containerd namespaces: %w", err)
	}
	var ws []hypervisors.Workload
	for _, n := range nl.Namespaces {
		ns := n.Name
		if len(b.cfg.Namespaces) > 0 && !hypervisors.MatchGlobs(b.cfg.Namespaces, ns) || ns == DockerNamespace {
			continue
		}
		tl, err := b.tasks.List(inNamespace(ctx, ns), &tasksapi.ListTasksRequest{})
		if err != nil {
			return nil, fmt.Errorf("listing containerd tasks of namespace %s: %w", ns, err)
		}
		for _, t := range tl.Tasks {
			if t.Status != task.Status_RUNNING && t.Status != task.Status_PAUSED {
				continue
			}
			id := ns + "/" + t.ID
			if len(b.cfg.Containers) > 0 && !hypervisors.MatchGlobs(b.cfg.Containers, id) {
				continue
			}
			ws = append(ws, hypervisors.Workload{ID: id, Kind: KindContainer, Backend: Name, PID: int(t.Pid),
				MemoryBytes: freezer.MemoryOfPID(int(t.Pid)),
				Attrs:       map[string]string{"namespace": ns, "id": t.ID, "manager": "containerd", "status": strings.ToLower(t.Status.String())}})
		}
	}
	return ws, nil
}

// getTask is the task of container id in ns.
func (b *Backend) getTask(ctx context.Context, ns, id string) (*task.Process, error) {
	g, err := b.tasks.Get(inNamespace(ctx, ns), &tasksapi.GetRequest{ContainerID: id})
	if err != nil {
		return nil, notFound(err, "containerd task "+ns+"/"+id)
	}
	return g.Process, nil
}

// getContainer is containerd's record of container id in ns.
func (b *Backend) getContainer(ctx context.Context, ns, id string) (*ctrsapi.Container, error) {
	g, err := b.ctrs.Get(inNamespace(ctx, ns), &ctrsapi.GetContainerRequest{ID: id})
	if err != nil {
		return nil, notFound(err, "containerd container "+ns+"/"+id)
	}
	return g.Container, nil
}

func (b *Backend) stateOf(id string) *taskState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state[id]
	if s == nil {
		s = &taskState{}
		b.state[id] = s
	}
	return s
}

func (b *Backend) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.state, id)
}

// spec is the part of a container's OCI spec the backend reads.
type spec struct {
	Annotations map[string]string `json:"annotations"`
	Process     struct {
		Terminal bool `json:"terminal"`
	} `json:"process"`
	Linux struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// Preflight implements hypervisors.Preflighter.
func (b *Backend) Preflight(ctx context.Context, w hypervisors.Workload) error {
	ns, id, err := split(w)
	if err != nil {
		return err
	}
	if ns == KubernetesNamespace {
		return fmt.Errorf("%w: containerd container %s is kubelet's (namespace %s): kubelet would recreate its pod after the update and never see the restored one; drain the node as usual (kubectl drain), or leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID, ns)
	}
	t, err := b.getTask(ctx, ns, id)
	if err != nil {
		return err
	}
	switch t.Status {
	case task.Status_RUNNING:
	case task.Status_PAUSED:
		return fmt.Errorf("%w: containerd task %s is paused: resume it (ctr -n %s task resume %s), or leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID, ns, id)
	default:
		return fmt.Errorf("%w: containerd task %s is %s, not running", hypervisors.ErrNotCheckpointable, w.ID, strings.ToLower(t.Status.String()))
	}
	if t.Terminal {
		return fmt.Errorf("%w: containerd task %s has a terminal (ctr run -t), which CRIU cannot restore through containerd: run it without -t, or leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID)
	}
	c, err := b.getContainer(ctx, ns, id)
	if err != nil {
		return err
	}
	if rt := c.GetRuntime().GetName(); !strings.HasPrefix(rt, "io.containerd.runc.") {
		return fmt.Errorf("%w: containerd container %s runs under %s, and only runc's shim (io.containerd.runc.v2) checkpoints: leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID, rt)
	}
	if o := c.GetRuntime().GetOptions(); o != nil && o.TypeUrl != runcOptionsURL {
		return fmt.Errorf("%w: containerd container %s has runtime options of type %s, which ckpt does not know how to keep across its restore: leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID, o.TypeUrl)
	}
	var sp spec
	if err := json.Unmarshal(c.GetSpec().GetValue(), &sp); err != nil {
		return fmt.Errorf("containerd container %s: its spec: %w", w.ID, err)
	}
	for _, n := range sp.Linux.Namespaces {
		if n.Type == "network" && n.Path != "" {
			return fmt.Errorf("%w: containerd container %s joins the network namespace %s made outside it (CNI, nerdctl): that namespace does not survive the reboot, and nothing would make it again before the restore; leave it out with --only",
				hypervisors.ErrNotCheckpointable, w.ID, n.Path)
		}
	}
	pl, err := b.tasks.ListPids(inNamespace(ctx, ns), &tasksapi.ListPidsRequest{ContainerID: id})
	if err != nil {
		return notFound(err, "processes of containerd task "+w.ID)
	}
	for _, p := range pl.Processes {
		if p.Info == nil || p.Info.TypeUrl != processDetailsURL {
			continue
		}
		var d options.ProcessDetails
		if proto.Unmarshal(p.Info.Value, &d) == nil && d.ExecID != "" {
			return fmt.Errorf("%w: containerd task %s runs the exec process %s (pid %d), which containerd would not know after the restore: let it end first, or leave the container out with --only",
				hypervisors.ErrNotCheckpointable, w.ID, d.ExecID, p.Pid)
		}
	}
	return nil
}

// Freeze implements hypervisors.Backend: containerd pauses the task.
func (b *Backend) Freeze(ctx context.Context, w hypervisors.Workload) error {
	ns, id, err := split(w)
	if err != nil {
		return err
	}
	t, err := b.getTask(ctx, ns, id)
	if err != nil {
		return err
	}
	if t.Status == task.Status_PAUSED {
		return nil
	}
	// Marked first: Thaw undoes a pause that was cut short.
	b.stateOf(w.ID).paused = true
	if _, err := b.tasks.Pause(inNamespace(ctx, ns), &tasksapi.PauseTaskRequest{ContainerID: id}); err != nil {
		return notFound(err, "pausing containerd task "+w.ID)
	}
	return nil
}

// undoTimeout bounds a rollback, a revive and a restore.
const undoTimeout = 10 * time.Minute

// detached is a context for undoing: it outlives the caller's.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
}

// Thaw implements hypervisors.Backend. A task that still exists is
// resumed; one that Dump's checkpoint ended is restored from its images.
// Thaw is harmless when repeated.
func (b *Backend) Thaw(ctx context.Context, w hypervisors.Workload) error {
	ns, id, err := split(w)
	if err != nil {
		return err
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	s := b.stateOf(w.ID)
	t, err := b.getTask(ctx, ns, id)
	switch {
	case err == nil && (t.Status == task.Status_RUNNING || t.Status == task.Status_PAUSED || t.Status == task.Status_PAUSING):
		if t.Status != task.Status_RUNNING {
			if err := b.resume(ctx, ns, id); err != nil {
				return err
			}
		}
		b.forget(w.ID)
		return nil
	case err != nil && !errors.Is(err, hypervisors.ErrNotFound):
		return err
	case s.ended == nil:
		// Not running, and this process did not end it (a resume on the
		// suspend's own boot): the engine restores it.
		b.forget(w.ID)
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: containerd task %s is %s, and this process checkpointed none of it", hypervisors.ErrNotFound, w.ID, strings.ToLower(t.Status.String()))
	}
	if err := b.restore(ctx, *s.ended, s.ended.Images, true); err != nil {
		return fmt.Errorf("bringing back containerd task %s from its checkpoint: %w", w.ID, err)
	}
	b.removeStaging(s.ended)
	b.forget(w.ID)
	return nil
}

// resume resumes a paused task and waits until it runs.
func (b *Backend) resume(ctx context.Context, ns, id string) error {
	for {
		_, err := b.tasks.Resume(inNamespace(ctx, ns), &tasksapi.ResumeTaskRequest{ContainerID: id})
		t, gerr := b.getTask(ctx, ns, id)
		if gerr != nil {
			return gerr
		}
		if t.Status == task.Status_RUNNING {
			return nil
		}
		if t.Status != task.Status_PAUSING && err != nil {
			return fmt.Errorf("resuming containerd task %s/%s: %w", ns, id, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("resuming containerd task %s/%s: still %s: %w", ns, id, strings.ToLower(t.Status.String()), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stdio are a task's standard streams as containerd knows them: FIFO
// paths, or URIs (file://, binary://).
type stdio struct {
	Stdin  string `json:"stdin,omitempty"`
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// rescue is the record Dump journals before its checkpoint ends the
// task: where the images are, and what the new task needs.
type rescue struct {
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	PID       int    `json:"pid"`
	Images    string `json:"images"`            // the directory CRIU writes
	Staging   string `json:"staging,omitempty"` // this backend's directory, removed when done
	Stdio     stdio  `json:"stdio"`
}

// recipe is what Restore needs.
type recipe struct {
	rescue
	Objects    []string `json:"objects"` // the images, as region objects
	Bytes      int64    `json:"bytes"`
	Containerd string   `json:"containerd"`
	CRIUMicros int64    `json:"criu_us"`
}

const imagePrefix = "images/"

// checkpointTimeout bounds a checkpoint once begun: containerd's shim
// runs CRIU, and would go on after a cancelled call.
const checkpointTimeout = 30 * time.Minute

// Dump implements hypervisors.Backend: containerd checkpoints the paused
// task, which ends it, and the ended task is deleted, its container kept.
// The images are written straight into the region where it takes files,
// else staged and copied in. Thaw brings the task back.
func (b *Backend) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	ns, id, err := split(w)
	if err != nil {
		return nil, err
	}
	t, err := b.getTask(ctx, ns, id)
	if err != nil {
		return nil, err
	}
	if t.Status != task.Status_PAUSED {
		return nil, fmt.Errorf("containerd task %s is %s, not paused by Freeze", w.ID, strings.ToLower(t.Status.String()))
	}
	if err := os.MkdirAll(b.cfg.WorkDir, 0o700); err != nil {
		return nil, err
	}
	staging, err := os.MkdirTemp(b.cfg.WorkDir, ns+"-"+id+"-")
	if err != nil {
		return nil, err
	}
	img, direct := hypervisors.FilesDir(dst, imagePrefix, filepath.Join(staging, "images"))
	work := filepath.Join(staging, "work")
	rec := recipe{rescue: rescue{Namespace: ns, ID: id, PID: int(t.Pid), Images: img, Staging: staging,
		Stdio: stdio{Stdin: t.Stdin, Stdout: t.Stdout, Stderr: t.Stderr}}, Containerd: b.version}
	// The checkpoint ends the task: say how to bring it back first.
	resc, _ := json.Marshal(rec.rescue)
	if err := hypervisors.RecordRescue(dst, resc); err != nil {
		os.RemoveAll(staging)
		return nil, fmt.Errorf("journalling how to bring %s back: %w", w.ID, err)
	}
	s := b.stateOf(w.ID)
	s.ended = &rec.rescue
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, _ := proto.Marshal(&options.CheckpointOptions{Exit: true, OpenTcp: true, FileLocks: true, ImagePath: img, WorkPath: work})
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), checkpointTimeout)
	defer cancel()
	start := time.Now()
	_, err = b.tasks.Checkpoint(inNamespace(cctx, ns), &tasksapi.CheckpointTaskRequest{ContainerID: id,
		Options: &anypb.Any{TypeUrl: checkpointOptsURL, Value: opts}})
	if err != nil {
		err = fmt.Errorf("containerd checkpoint of %s: %w%s", w.ID, err, logTail(filepath.Join(work, "dump.log")))
		if t, gerr := b.getTask(cctx, ns, id); gerr == nil && t.Status != task.Status_STOPPED {
			s.ended = nil // CRIU let it run on: Thaw resumes it
			os.RemoveAll(staging)
			if direct {
				os.RemoveAll(img)
			}
		}
		return nil, err
	}
	rec.CRIUMicros = time.Since(start).Microseconds()
	if err := b.deleteEnded(cctx, ns, id); err != nil {
		return nil, err
	}
	b.log.Info("the task ended with its checkpoint", "workload", w.ID)
	if direct {
		rec.Objects, rec.Bytes, err = hypervisors.AdoptDir(ctx, img, imagePrefix, dst.(hypervisors.DirectSink))
	} else {
		rec.Objects, rec.Bytes, err = hypervisors.StoreDir(ctx, img, imagePrefix, dst)
	}
	if err != nil {
		return nil, fmt.Errorf("storing the checkpoint of %s: %w", w.ID, err)
	}
	return json.Marshal(rec)
}

// deleteEnded waits until the checkpointed task has exited and deletes
// it, so that a new task of the container can be created.
func (b *Backend) deleteEnded(ctx context.Context, ns, id string) error {
	nctx := inNamespace(ctx, ns)
	if _, err := b.tasks.Wait(nctx, &tasksapi.WaitRequest{ContainerID: id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("waiting for containerd task %s/%s to end after its checkpoint: %w", ns, id, err)
	}
	if _, err := b.tasks.Delete(nctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("deleting the ended containerd task %s/%s: %w", ns, id, err)
	}
	return nil
}

// logTail is the end of a CRIU log, for an error message.
func logTail(file string) string {
	b, err := os.ReadFile(file)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return " (" + file + ": " + strings.Join(lines, " | ") + ")"
}

// removeStaging removes what Dump staged outside the region.
func (b *Backend) removeStaging(r *rescue) {
	if r != nil && r.Staging != "" && strings.HasPrefix(r.Staging, b.cfg.WorkDir+"/") {
		os.RemoveAll(r.Staging)
	}
}

// Finish implements hypervisors.Backend. The checkpoint already ended and
// deleted the task; what was staged for the copy into the region goes.
func (b *Backend) Finish(ctx context.Context, w hypervisors.Workload) error {
	ns, id, err := split(w)
	if err != nil {
		return err
	}
	s := b.stateOf(w.ID)
	ended := s.ended
	b.forget(w.ID)
	if t, err := b.getTask(ctx, ns, id); err == nil && t.Status != task.Status_STOPPED {
		return fmt.Errorf("containerd task %s is %s after its checkpoint: someone started it", w.ID, strings.ToLower(t.Status.String()))
	}
	b.removeStaging(ended)
	return nil
}

// StagingBytes implements hypervisors.Stager: where the region takes no
// files in place, the images are staged in WorkDir, as large as the dump.
func (b *Backend) StagingBytes(_ hypervisors.Workload, estimate int64, direct bool) int64 {
	if direct {
		return 0
	}
	return estimate
}

// Restore implements hypervisors.Backend: a new task of the container
// is created from the images and started, under containerd.
func (b *Backend) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("containerd recipe of %s: %w", w.ID, err)
	}
	if rec.Namespace == "" || rec.ID == "" || len(rec.Objects) == 0 {
		return fmt.Errorf("containerd recipe of %s: no container or no images", w.ID)
	}
	if err := os.MkdirAll(b.cfg.WorkDir, 0o700); err != nil {
		return err
	}
	staging, err := os.MkdirTemp(b.cfg.WorkDir, rec.Namespace+"-"+rec.ID+"-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging)
	img, err := hypervisors.FilesFrom(src, rec.Objects, imagePrefix, filepath.Join(staging, "images"))
	if err != nil {
		return fmt.Errorf("reading the checkpoint of %s from the region: %w", w.ID, err)
	}
	r := rec.rescue
	r.Staging = staging
	return b.restore(ctx, r, img, false)
}

// restore creates and starts a task of the container r names from the
// images in img. A rollback (repeat) takes a task that runs for one it
// restored before; a resume refuses to restore over it.
func (b *Backend) restore(ctx context.Context, r rescue, img string, repeat bool) error {
	ns, id := r.Namespace, r.ID
	nctx := inNamespace(ctx, ns)
	w := ns + "/" + id
	c, err := b.getContainer(ctx, ns, id)
	if err != nil {
		return fmt.Errorf("containerd no longer knows the container, and restores only into one it knows: %w", err)
	}
	switch t, err := b.getTask(ctx, ns, id); {
	case err == nil && t.Status == task.Status_STOPPED || err == nil && t.Status == task.Status_CREATED:
		if _, err := b.tasks.Delete(nctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("deleting the %s task of %s: %w", strings.ToLower(t.Status.String()), w, err)
		}
	case err == nil && repeat:
		return nil // restored before, by this rollback
	case err == nil:
		return fmt.Errorf("containerd task %s is already %s (started afresh?): not restoring over it", w, strings.ToLower(t.Status.String()))
	case !errors.Is(err, hypervisors.ErrNotFound):
		return err
	}
	var mounts []*types.Mount
	if c.SnapshotKey != "" {
		m, err := b.snaps.Mounts(nctx, &snapsapi.MountsRequest{Snapshotter: c.Snapshotter, Key: c.SnapshotKey})
		if err != nil {
			return fmt.Errorf("the rootfs of %s (snapshot %s of %s): %w", w, c.SnapshotKey, c.Snapshotter, err)
		}
		mounts = m.Mounts
	}
	ro := &options.Options{}
	if o := c.GetRuntime().GetOptions(); o != nil {
		if o.TypeUrl != runcOptionsURL {
			return fmt.Errorf("containerd container %s: runtime options of type %s", w, o.TypeUrl)
		}
		if err := proto.Unmarshal(o.Value, ro); err != nil {
			return fmt.Errorf("containerd container %s: runtime options: %w", w, err)
		}
	}
	work := filepath.Join(r.Staging, "restore-work")
	if r.Staging == "" {
		work = filepath.Join(b.cfg.WorkDir, ns+"-"+id+"-restore-work")
	}
	os.RemoveAll(work)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if dir, n, err := criu.RearmTimerfdImages(img, filepath.Join(work, "images-rearmed")); err != nil {
		b.log.Warn("periodic timerfds in the images may come back disarmed", "workload", w, "err", err)
	} else {
		if n > 0 {
			b.log.Info("re-armed expired periodic timerfds", "workload", w, "timerfds", n)
		}
		img = dir
	}
	ro.CriuImagePath, ro.CriuWorkPath = img, work
	rv, err := proto.Marshal(ro)
	if err != nil {
		return err
	}
	if err := recreateFIFOs(r.Stdio); err != nil {
		return fmt.Errorf("the standard streams of %s: %w", w, err)
	}
	undo, err := b.withCRIUConfig(ctx, ns, c)
	if err != nil {
		return err
	}
	defer undo()
	restoring := hypervisors.CRIURestoring()
	defer restoring()
	if _, err := b.tasks.Create(nctx, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: mounts,
		Stdin: r.Stdio.Stdin, Stdout: r.Stdio.Stdout, Stderr: r.Stdio.Stderr,
		Options: &anypb.Any{TypeUrl: runcOptionsURL, Value: rv}}); err != nil {
		return fmt.Errorf("creating the restored task of %s: %w%s", w, err, logTail(filepath.Join(work, "restore.log")))
	}
	if _, err := b.tasks.Start(nctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
		err = fmt.Errorf("containerd restore of %s: %w%s", w, err, logTail(filepath.Join(work, "restore.log")))
		if _, derr := b.tasks.Delete(inNamespace(context.WithoutCancel(ctx), ns), &tasksapi.DeleteTaskRequest{ContainerID: id}); derr != nil && status.Code(derr) != codes.NotFound {
			err = errors.Join(err, fmt.Errorf("deleting the task that did not start: %w", derr))
		}
		return err
	}
	return nil
}

// recreateFIFOs makes the FIFOs of a task's streams where they are gone
// (a reboot emptied /run/containerd/fifo): the shim opens them, and a
// restored task writes where it wrote before. URIs (file://, binary://)
// are the shim's to open.
func recreateFIFOs(s stdio) error {
	for _, p := range []string{s.Stdin, s.Stdout, s.Stderr} {
		if p == "" || strings.Contains(p, "://") || !filepath.IsAbs(p) {
			continue
		}
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err := syscall.Mkfifo(p, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}

// criuConfig is the CRIU configuration of a restore: containerd 1.6
// gives runc no CRIU options for it, and the checkpoint kept established
// TCP connections and file locks.
const criuConfig = "tcp-established\nfile-locks\n"

// withCRIUConfig points container c's org.criu.config annotation at a
// configuration file for the restore, and returns what puts the spec back
// as it was.
func (b *Backend) withCRIUConfig(ctx context.Context, ns string, c *ctrsapi.Container) (undo func(), err error) {
	dir := filepath.Join(b.cfg.WorkDir, "criu")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, ns+"-"+c.ID+".conf")
	if err := os.WriteFile(file, []byte(criuConfig), 0o600); err != nil {
		return nil, err
	}
	orig := c.GetSpec()
	patched, err := setAnnotation(orig.GetValue(), criuConfigAnnotation, file)
	if err != nil {
		return nil, fmt.Errorf("containerd container %s/%s: its spec: %w", ns, c.ID, err)
	}
	if err := b.updateSpec(ctx, ns, c, &anypb.Any{TypeUrl: orig.GetTypeUrl(), Value: patched}); err != nil {
		return nil, err
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		os.Remove(file) // runc reads it no more; a later checkpoint passes its own options
		if err := b.updateSpec(uctx, ns, c, orig); err != nil {
			b.log.Warn("the container's spec keeps ckpt's CRIU configuration", "container", c.ID, "annotation", criuConfigAnnotation, "err", err)
		}
	}, nil
}

func (b *Backend) updateSpec(ctx context.Context, ns string, c *ctrsapi.Container, sp *anypb.Any) error {
	u := &ctrsapi.Container{ID: c.ID, Spec: sp}
	_, err := b.ctrs.Update(inNamespace(ctx, ns), &ctrsapi.UpdateContainerRequest{Container: u, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec"}}})
	if err != nil {
		return fmt.Errorf("updating the spec of containerd container %s: %w", c.ID, err)
	}
	return nil
}

// setAnnotation sets an annotation in an OCI spec and keeps every other
// field as it was, numbers exactly.
func setAnnotation(raw []byte, key, value string) ([]byte, error) {
	var sp map[string]json.RawMessage
	if err := json.Unmarshal(raw, &sp); err != nil {
		return nil, err
	}
	ann := map[string]string{}
	if a, ok := sp["annotations"]; ok && string(a) != "null" {
		if err := json.Unmarshal(a, &ann); err != nil {
			return nil, fmt.Errorf("annotations: %w", err)
		}
	}
	ann[key] = value
	a, err := json.Marshal(ann)
	if err != nil {
		return nil, err
	}
	sp["annotations"] = a
	return json.Marshal(sp)
}

// Revive implements hypervisors.Reviver: after a crash, a task that still
// exists is resumed; one the checkpoint ended is restored from its images.
func (b *Backend) Revive(ctx context.Context, w hypervisors.Workload, raw json.RawMessage) error {
	var r rescue
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("containerd rescue of %s: %w", w.ID, err)
	}
	if r.Namespace+"/"+r.ID != w.ID {
		return fmt.Errorf("containerd rescue of %s names %s/%s", w.ID, r.Namespace, r.ID)
	}
	t, err := b.getTask(ctx, r.Namespace, r.ID)
	if err != nil && !errors.Is(err, hypervisors.ErrNotFound) {
		return err
	}
	if err == nil && t.Status != task.Status_STOPPED && t.Status != task.Status_CREATED {
		if err := b.Thaw(ctx, w); err != nil {
			return err
		}
		b.removeStaging(&r) // what the killed dump staged
		return nil
	}
	if _, serr := os.Stat(filepath.Join(r.Images, "inventory.img")); serr != nil {
		return fmt.Errorf("containerd task %s ended, and its checkpoint is not at %s: %w", w.ID, r.Images, serr)
	}
	if err == nil {
		ctx, cancel := detached(ctx)
		defer cancel()
		if err := b.deleteEnded(ctx, r.Namespace, r.ID); err != nil {
			return err
		}
	}
	b.stateOf(w.ID).ended = &r
	return b.Thaw(ctx, w)
}
