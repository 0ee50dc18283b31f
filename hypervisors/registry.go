package hypervisors

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// InitContext is what a backend's Init gets.
type InitContext struct {
	Logger *slog.Logger
	// Config is the backend's typed config: what Registration.Config
	// returned, with the backend's table decoded into it (nil without a
	// Registration.Config).
	Config any
}

// Flag is a command-line spelling of one of a backend's config keys; the
// CLI generates it from the registration (--runc-root for criu's
// runc_root). A List flag may be repeated.
type Flag struct {
	Name, Key, Usage string
	List             bool
}

// Registration describes a backend to the engine.
type Registration struct {
	Name string
	// Config returns a pointer to the backend's default config, a struct
	// whose json tags are its config keys ([backends.NAME] in ckpt.toml).
	Config func() any
	// Flags are the config keys that have command-line flags.
	Flags []Flag
	Init  func(ctx context.Context, ic InitContext) (Backend, error)
}

// DecodeConfig decodes a backend's config table into its typed config;
// an unknown key is an error, so that a typo does not pass silently.
func (r Registration) DecodeConfig(table map[string]any) (any, error) {
	if r.Config == nil {
		if len(table) > 0 {
			return nil, fmt.Errorf("backend %s takes no configuration", r.Name)
		}
		return nil, nil
	}
	cfg := r.Config()
	if len(table) == 0 {
		return cfg, nil
	}
	b, err := json.Marshal(table)
	if err != nil {
		return nil, fmt.Errorf("[backends.%s]: %w", r.Name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("[backends.%s]: %w", r.Name, err)
	}
	return cfg, nil
}

var (
	regMu sync.Mutex
	regs  = map[string]Registration{}
)

// Register adds a backend; backends call it from init. It panics on a
// duplicate name, a programming error.
func Register(r Registration) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := regs[r.Name]; dup || r.Name == "" || r.Init == nil {
		panic(fmt.Sprintf("hypervisors: bad or duplicate registration %q", r.Name))
	}
	regs[r.Name] = r
}

// Registered lists the registered backends by name.
func Registered() []Registration {
	regMu.Lock()
	defer regMu.Unlock()
	out := make([]Registration, 0, len(regs))
	for _, r := range regs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func names() string {
	var out []string
	for _, r := range Registered() {
		out = append(out, r.Name)
	}
	return strings.Join(out, ", ")
}

// Load initialises every registered backend, each with its table of
// configs (decoded by DecodeConfig). Backends that decline (an
// error wrapping ErrSkipBackend) are returned in skipped with the reason;
// any other Init error fails Load.
func Load(ctx context.Context, configs map[string]map[string]any, log *slog.Logger) (backends []Backend, skipped map[string]error, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	skipped = map[string]error{}
	known := map[string]bool{}
	for _, r := range Registered() {
		known[r.Name] = true
	}
	for name := range configs {
		if !known[name] {
			return nil, nil, fmt.Errorf("config for %q: no such backend (registered: %s)", name, names())
		}
	}
	for _, r := range Registered() {
		cfg, err := r.DecodeConfig(configs[r.Name])
		if err != nil {
			return nil, nil, err
		}
		b, ierr := r.Init(ctx, InitContext{Logger: log.With("backend", r.Name), Config: cfg})
		switch {
		case errors.Is(ierr, ErrSkipBackend):
			skipped[r.Name] = ierr
			log.Info("backend skipped", "backend", r.Name, "reason", ierr)
		case ierr != nil:
			Close(backends) // those loaded already hold connections
			return nil, nil, fmt.Errorf("backend %s: %w", r.Name, ierr)
		default:
			backends = append(backends, b)
		}
	}
	return backends, skipped, nil
}

// Close closes the backends that hold something open (io.Closer: libvirt's,
// containerd's and QEMU's connections), for a caller done with them.
func Close(backends []Backend) error {
	var errs []error
	for _, b := range backends {
		if c, ok := b.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
