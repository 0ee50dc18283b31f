// Package docker suspends the containers of Docker's daemon with the
// daemon's own checkpoint and restore, so that Docker keeps managing
// them: afterwards docker ps lists each container running under its name
// and ID, and docker logs, exec and stop work.
//
// Debian 12's docker.io (20.10) can bring a checkpointed container back
// after its daemons restarted and /run was wiped, as after a reboot: the
// container's record lives on disk (/var/lib/docker), and docker start
// --checkpoint restores it from a checkpoint under the container's own
// directory. Checkpoints are an experimental feature: the daemon must run
// with "experimental": true, or preflight refuses its containers.
//
// Freeze is docker pause. Dump is a checkpoint (POST
// /containers/ID/checkpoints, Exit) written straight into a directory
// region, or staged and copied into a raw one; it ends the container, so
// the dump journals a rescue first and a rollback restores the container
// from those images. Restore copies the images into the container's
// checkpoint directory (docker start refuses any other) and starts the
// container from them. A restart policy would have the daemon start the
// container afresh, right after its checkpoint ended it or at boot: it is
// switched to "no" while the container is suspended and put back after.
package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// Name is the backend's registered name.
const Name = "docker"

// KindContainer is the kind of a Docker container.
const KindContainer = "container"

const (
	imagePrefix    = "images/"
	checkpointName = "ckpt" // the checkpoint's name in the container's directory
)

// Config configures the backend; zero values mean defaults.
type Config struct {
	// Socket is dockerd's API socket (default /run/docker.sock).
	Socket string `json:"socket"`
	// Containers are the container names (path.Match globs) to suspend;
	// empty means every running container.
	Containers []string `json:"containers"`
	// Root is dockerd's data root (default /var/lib/docker), where each
	// container's checkpoints live.
	Root string `json:"root"`
	// StagingDir holds checkpoints staged for a raw region (default
	// /run/ckpt/docker).
	StagingDir string `json:"staging_dir"`
}

func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Socket, "/run/docker.sock")
	def(&c.Root, "/var/lib/docker")
	def(&c.StagingDir, "/run/ckpt/docker")
	return c
}

// Backend is the Docker backend. Its methods are safe for concurrent use
// on different containers.
type Backend struct {
	cfg          Config
	log          *slog.Logger
	http         *http.Client
	version      string
	experimental bool

	mu    sync.Mutex
	state map[string]*ctrState // by container name
}

// ctrState is what this process did to a container between Freeze and
// Finish or Thaw.
type ctrState struct {
	wasPaused bool   // paused before Freeze: stays paused
	froze     bool   // Freeze paused it
	restart   string // the restart policy Dump switched to "no" ("" none)
	retries   int    // its MaximumRetryCount
	saved     string // the checkpoint Dump wrote (for a rollback)
	staged    bool   // saved is a staging copy to remove
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
			{Name: "docker-container", Key: "containers", List: true, Usage: "Docker container name or glob to suspend (repeatable; default every running container)"},
		},
		Init: func(ctx context.Context, ic hypervisors.InitContext) (hypervisors.Backend, error) {
			return New(ctx, *ic.Config.(*Config), ic.Logger)
		},
	})
}

// New connects to dockerd, or returns an error wrapping
// hypervisors.ErrSkipBackend when no dockerd runs here.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := hypervisors.CheckGlobs("docker containers", cfg.Containers); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.Socket); err != nil {
		return nil, fmt.Errorf("%w: dockerd is not running (no socket %s)", hypervisors.ErrSkipBackend, cfg.Socket)
	}
	sock := cfg.Socket
	b := &Backend{cfg: cfg, log: log, state: map[string]*ctrState{}, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}}
	var info struct {
		ServerVersion   string `json:"ServerVersion"`
		ExperimentalBld bool   `json:"ExperimentalBuild"`
	}
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.call(ictx, "GET", "/info", nil, &info); err != nil {
		return nil, fmt.Errorf("%w: dockerd at %s does not answer: %v", hypervisors.ErrSkipBackend, cfg.Socket, err)
	}
	b.version, b.experimental = info.ServerVersion, info.ExperimentalBld
	return b, nil
}

// Name implements hypervisors.Backend.
func (b *Backend) Name() string { return Name }

// Version is dockerd's version.
func (b *Backend) Version() string { return b.version }

// apiError is dockerd's answer to a failed call.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("dockerd: %s (HTTP %d)", e.Message, e.Status) }

func isNotFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// call makes an API call with a JSON body (nil for none) and decodes a
// JSON answer into out (nil to ignore it).
func (b *Backend) call(ctx context.Context, method, p string, body, out any) error {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://docker"+p, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(data, &m) != nil || m.Message == "" {
			m.Message = strings.TrimSpace(string(data))
		}
		return &apiError{Status: resp.StatusCode, Message: m.Message}
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

// container is the part of docker inspect the backend reads.
type container struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State struct {
		Status  string `json:"Status"`
		Running bool   `json:"Running"`
		Paused  bool   `json:"Paused"`
		Pid     int    `json:"Pid"`
	} `json:"State"`
	HostConfig struct {
		AutoRemove    bool `json:"AutoRemove"`
		RestartPolicy struct {
			Name              string `json:"Name"`
			MaximumRetryCount int    `json:"MaximumRetryCount"`
		} `json:"RestartPolicy"`
	} `json:"HostConfig"`
}

func (b *Backend) inspect(ctx context.Context, name string) (*container, error) {
	var c container
	if err := b.call(ctx, "GET", "/containers/"+url.PathEscape(name)+"/json", nil, &c); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: docker container %s", hypervisors.ErrNotFound, name)
		}
		return nil, fmt.Errorf("docker inspect %s: %w", name, err)
	}
	return &c, nil
}

func (b *Backend) wanted(name string) bool {
	return len(b.cfg.Containers) == 0 || hypervisors.MatchGlobs(b.cfg.Containers, name)
}

// Discover implements hypervisors.Backend: dockerd's running (or paused)
// containers.
func (b *Backend) Discover(ctx context.Context) ([]hypervisors.Workload, error) {
	var list []struct {
		ID    string   `json:"Id"`
		Names []string `json:"Names"`
	}
	if err := b.call(ctx, "GET", "/containers/json", nil, &list); err != nil {
		return nil, fmt.Errorf("listing docker containers: %w", err)
	}
	var ws []hypervisors.Workload
	for _, l := range list {
		if len(l.Names) == 0 {
			continue
		}
		name := strings.TrimPrefix(l.Names[0], "/")
		if !b.wanted(name) {
			continue
		}
		c, err := b.inspect(ctx, l.ID)
		if err != nil {
			continue // gone meanwhile
		}
		ws = append(ws, hypervisors.Workload{
			ID: name, Kind: KindContainer, Backend: Name, PID: c.State.Pid, MemoryBytes: freezer.MemoryOfPID(c.State.Pid),
			Attrs: map[string]string{"id": c.ID, "manager": "docker", "restart": c.HostConfig.RestartPolicy.Name},
		})
	}
	return ws, nil
}

func (b *Backend) stateOf(name string) *ctrState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state[name]
	if s == nil {
		s = &ctrState{}
		b.state[name] = s
	}
	return s
}

func (b *Backend) forget(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.state[name]; s != nil && s.staged {
		os.RemoveAll(filepath.Dir(s.saved)) // the staging directory around images/
	}
	delete(b.state, name)
}

// Preflight implements hypervisors.Preflighter.
func (b *Backend) Preflight(ctx context.Context, w hypervisors.Workload) error {
	if !b.experimental {
		return fmt.Errorf("%w: docker container %s: dockerd %s runs without experimental features, which its checkpoint and restore need: set \"experimental\": true in /etc/docker/daemon.json and restart dockerd (its containers restart by their restart policy), or leave the container out with --only",
			hypervisors.ErrNotCheckpointable, w.ID, b.version)
	}
	c, err := b.inspect(ctx, w.ID)
	if err != nil {
		return err
	}
	if !c.State.Running {
		return fmt.Errorf("%w: docker container %s is %s, not running", hypervisors.ErrNotCheckpointable, w.ID, c.State.Status)
	}
	if c.HostConfig.AutoRemove {
		return fmt.Errorf("%w: docker container %s was started with --rm: the end of its checkpoint would remove it, and the checkpoint with it; start it without --rm, or leave it out with --only",
			hypervisors.ErrNotCheckpointable, w.ID)
	}
	return nil
}

// Freeze implements hypervisors.Backend: docker pause.
func (b *Backend) Freeze(ctx context.Context, w hypervisors.Workload) error {
	c, err := b.inspect(ctx, w.ID)
	if err != nil {
		return err
	}
	s := b.stateOf(w.ID)
	switch {
	case c.State.Paused:
		if !s.froze {
			s.wasPaused = true
		}
		return nil
	case c.State.Running:
		// Marked first, for Thaw to undo. The call is not cut short by ctx:
		// dockerd would pause the container anyway, after Freeze returned.
		s.froze = true
		pctx, cancel := detached(ctx)
		defer cancel()
		if err := b.call(pctx, "POST", "/containers/"+url.PathEscape(w.ID)+"/pause", nil, nil); err != nil {
			return fmt.Errorf("docker pause %s: %w", w.ID, err)
		}
		return nil
	}
	return fmt.Errorf("%w: docker container %s is %s", hypervisors.ErrNotCheckpointable, w.ID, c.State.Status)
}

// detached is a context for undoing: it outlives the caller's.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
}

// Thaw implements hypervisors.Backend. A container that still runs is
// unpaused (unless it was paused before Freeze); one that Dump's
// checkpoint ended is started again from that checkpoint.
func (b *Backend) Thaw(ctx context.Context, w hypervisors.Workload) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	s := b.stateOf(w.ID)
	c, err := b.inspect(ctx, w.ID)
	if err != nil {
		if errors.Is(err, hypervisors.ErrNotFound) {
			b.forget(w.ID)
		}
		return err
	}
	switch {
	case c.State.Running:
		if c.State.Paused && !s.wasPaused {
			if err := b.call(ctx, "POST", "/containers/"+url.PathEscape(w.ID)+"/unpause", nil, nil); err != nil {
				return fmt.Errorf("docker unpause %s: %w", w.ID, err)
			}
		}
	case s.saved != "":
		if err := b.startFrom(ctx, c, s.saved, s.wasPaused); err != nil {
			return err
		}
	default:
		b.forget(w.ID)
		return fmt.Errorf("%w: docker container %s is %s, and this process checkpointed none of it", hypervisors.ErrNotFound, w.ID, c.State.Status)
	}
	if s.restart != "" {
		if err := b.setRestart(ctx, w.ID, s.restart, s.retries); err != nil {
			return err
		}
	}
	b.forget(w.ID)
	return nil
}

func (b *Backend) setRestart(ctx context.Context, name, policy string, retries int) error {
	body := map[string]any{"RestartPolicy": map[string]any{"Name": policy, "MaximumRetryCount": retries}}
	if err := b.call(ctx, "POST", "/containers/"+url.PathEscape(name)+"/update", body, nil); err != nil {
		return fmt.Errorf("setting the restart policy of docker container %s to %q: %w", name, policy, err)
	}
	return nil
}

// recipe is what Restore needs.
type recipe struct {
	Name    string   `json:"name"`
	ID      string   `json:"id"`
	Images  []string `json:"images"`
	Bytes   int64    `json:"bytes"`
	Paused  bool     `json:"paused,omitempty"`  // paused before the suspend
	Restart string   `json:"restart,omitempty"` // the restart policy to put back
	Retries int      `json:"retries,omitempty"`
	Docker  string   `json:"docker"`
}

// rescue is the record Dump journals before the checkpoint ends the
// container.
type rescue struct {
	Name    string `json:"name"`
	Dir     string `json:"dir"`
	Staged  bool   `json:"staged,omitempty"`
	Paused  bool   `json:"paused,omitempty"`
	Restart string `json:"restart,omitempty"`
	Retries int    `json:"retries,omitempty"`
}

// Dump implements hypervisors.Backend: checkpoint the paused container
// into dst. The checkpoint ends the container; Thaw brings it back.
func (b *Backend) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	c, err := b.inspect(ctx, w.ID)
	if err != nil {
		return nil, err
	}
	if !c.State.Paused {
		return nil, fmt.Errorf("docker container %s is not frozen", w.ID)
	}
	s := b.stateOf(w.ID)
	dir, direct := "", false
	if ds, ok := dst.(hypervisors.DirectSink); ok {
		if d, err := ds.Dir(strings.TrimSuffix(imagePrefix, "/")); err == nil {
			dir, direct = d, true
		}
	}
	if !direct {
		if err := os.MkdirAll(b.cfg.StagingDir, 0o700); err != nil {
			return nil, err
		}
		tmp, err := os.MkdirTemp(b.cfg.StagingDir, w.ID+"-")
		if err != nil {
			return nil, err
		}
		dir = filepath.Join(tmp, "images")
	}
	// dockerd refuses a checkpoint directory that exists: it makes it. A
	// direct one may hold the files of an earlier, uncommitted dump of
	// this workload (a suspend killed after it): the region is not sealed
	// (the plan refuses a sealed one), so they are garbage of its own.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("docker checkpoint of %s: %w", w.ID, err)
	}
	policy := c.HostConfig.RestartPolicy
	restart := ""
	if policy.Name != "" && policy.Name != "no" {
		restart = policy.Name
	}
	// The checkpoint ends the container: say how to bring it back first.
	resc, _ := json.Marshal(rescue{Name: w.ID, Dir: dir, Staged: !direct, Paused: s.wasPaused, Restart: restart, Retries: policy.MaximumRetryCount})
	if err := hypervisors.RecordRescue(dst, resc); err != nil {
		return nil, err
	}
	if restart != "" {
		if err := b.setRestart(ctx, w.ID, "no", 0); err != nil {
			return nil, err
		}
		s.restart, s.retries = restart, policy.MaximumRetryCount
	}
	// dockerd writes the images into CheckpointDir/CheckpointID.
	// Not cut short by ctx: dockerd cannot abort a checkpoint, which would
	// end the container after Dump returned. Dump returns when it is over.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	body := map[string]any{"CheckpointID": filepath.Base(dir), "CheckpointDir": filepath.Dir(dir), "Exit": true}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Minute)
	defer cancel()
	if err := b.call(cctx, "POST", "/containers/"+url.PathEscape(w.ID)+"/checkpoints", body, nil); err != nil {
		// No images: the container may still run (paused), and Thaw finds it so.
		return nil, fmt.Errorf("docker checkpoint of %s: %w", w.ID, err)
	}
	s.saved, s.staged = dir, !direct
	var names []string
	var total int64
	if direct {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			if err := dst.(hypervisors.DirectSink).Adopt(imagePrefix + e.Name()); err != nil {
				return nil, err
			}
			names = append(names, imagePrefix+e.Name())
			total += info.Size()
		}
	} else if names, total, err = hypervisors.StoreDir(ctx, dir, imagePrefix, dst); err != nil {
		return nil, err
	}
	return json.Marshal(recipe{Name: w.ID, ID: c.ID, Images: names, Bytes: total, Paused: s.wasPaused,
		Restart: s.restart, Retries: s.retries, Docker: b.version})
}

// startFrom puts the images in dir into the container's checkpoint
// directory (the only one docker start takes) and starts the container
// from them, paused again if it was.
func (b *Backend) startFrom(ctx context.Context, c *container, dir string, paused bool) error {
	cp := b.checkpointDir(c.ID)
	if err := os.RemoveAll(cp); err != nil {
		return err
	}
	if err := copyFiles(dir, cp); err != nil {
		return fmt.Errorf("docker container %s: %w", c.Name, err)
	}
	return b.start(ctx, c, paused)
}

func (b *Backend) checkpointDir(id string) string {
	return filepath.Join(b.cfg.Root, "containers", id, "checkpoints", checkpointName)
}

// start starts the container from its checkpoint checkpointName and
// drops the checkpoint.
func (b *Backend) start(ctx context.Context, c *container, paused bool) error {
	name := strings.TrimPrefix(c.Name, "/")
	restoring := hypervisors.CRIURestoring()
	err := b.call(ctx, "POST", "/containers/"+url.PathEscape(c.ID)+"/start?checkpoint="+checkpointName, nil, nil)
	restoring()
	if err != nil {
		return fmt.Errorf("docker start --checkpoint of %s: %w", name, err)
	}
	if err := b.call(ctx, "DELETE", "/containers/"+url.PathEscape(c.ID)+"/checkpoints/"+checkpointName, nil, nil); err != nil {
		b.log.Warn("dropping the restored checkpoint", "container", name, "err", err)
	}
	if paused {
		if err := b.call(ctx, "POST", "/containers/"+url.PathEscape(c.ID)+"/pause", nil, nil); err != nil {
			return fmt.Errorf("docker pause %s (paused before the suspend): %w", name, err)
		}
	}
	return nil
}

func copyFiles(from, to string) error {
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		in, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		out, err := os.OpenFile(filepath.Join(to, e.Name()), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err == nil {
			_, err = io.Copy(out, in)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		in.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Finish implements hypervisors.Backend. The checkpoint already ended the
// container; the staged copy is no longer needed.
func (b *Backend) Finish(ctx context.Context, w hypervisors.Workload) error {
	b.forget(w.ID)
	c, err := b.inspect(ctx, w.ID)
	if errors.Is(err, hypervisors.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.State.Running {
		return fmt.Errorf("docker container %s runs again after its checkpoint: someone started it", w.ID)
	}
	return nil
}

// Restore implements hypervisors.Backend: the images go from the region
// into the container's checkpoint directory, and docker starts the
// container from them.
func (b *Backend) Restore(ctx context.Context, w hypervisors.Workload, raw json.RawMessage, src hypervisors.ObjectSource) error {
	var rec recipe
	if err := json.Unmarshal(raw, &rec); err != nil {
		return fmt.Errorf("docker recipe of %s: %w", w.ID, err)
	}
	if rec.ID == "" || len(rec.Images) == 0 {
		return fmt.Errorf("docker recipe of %s: no container or images", w.ID)
	}
	c, err := b.inspect(ctx, rec.ID)
	if err != nil {
		return fmt.Errorf("docker container %s (%s) is gone from dockerd, which restores only a container it still knows: %w", rec.Name, rec.ID[:12], err)
	}
	if c.State.Running {
		return fmt.Errorf("docker container %s is already running: not restoring over it", rec.Name)
	}
	cp := b.checkpointDir(c.ID)
	if err := os.RemoveAll(cp); err != nil {
		return err
	}
	if err := hypervisors.LoadDir(src, rec.Images, imagePrefix, cp); err != nil {
		os.RemoveAll(cp)
		return fmt.Errorf("reading the checkpoint of %s from the region: %w", rec.Name, err)
	}
	if err := b.start(ctx, c, rec.Paused); err != nil {
		return err
	}
	if rec.Restart != "" {
		return b.setRestart(ctx, rec.Name, rec.Restart, rec.Retries)
	}
	return nil
}

// Revive implements hypervisors.Reviver: after a crash, a container still
// running is unpaused; one whose checkpoint ended it is started from it.
func (b *Backend) Revive(ctx context.Context, w hypervisors.Workload, raw json.RawMessage) error {
	var r rescue
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("docker rescue of %s: %w", w.ID, err)
	}
	s := b.stateOf(w.ID)
	s.wasPaused, s.restart, s.retries = r.Paused, r.Restart, r.Retries
	if ents, err := os.ReadDir(r.Dir); err == nil && len(ents) > 0 {
		s.saved, s.staged = r.Dir, r.Staged
	}
	return b.Thaw(ctx, w)
}

// StagingBytes implements hypervisors.Stager: for a raw region the
// checkpoint is staged on tmpfs, as large as the container's memory.
func (b *Backend) StagingBytes(_ hypervisors.Workload, estimate int64, direct bool) int64 {
	if direct {
		return 0
	}
	return estimate
}
