package hypervisors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// InitContext is what a backend's Init gets.
type InitContext struct {
	Logger *slog.Logger
	// Config holds the backend's section of the configuration, decoded by
	// the backend itself (nil: defaults).
	Config map[string]any
}

// Registration describes a backend to the engine.
type Registration struct {
	Name string
	Init func(ctx context.Context, ic InitContext) (Backend, error)
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

// Load initialises every registered backend. Backends that decline (an
// error wrapping ErrSkipBackend) are returned in skipped with the reason;
// any other Init error fails Load.
func Load(ctx context.Context, configs map[string]map[string]any, log *slog.Logger) (backends []Backend, skipped map[string]error, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	skipped = map[string]error{}
	for _, r := range Registered() {
		b, ierr := r.Init(ctx, InitContext{Logger: log.With("backend", r.Name), Config: configs[r.Name]})
		switch {
		case errors.Is(ierr, ErrSkipBackend):
			skipped[r.Name] = ierr
			log.Info("backend skipped", "backend", r.Name, "reason", ierr)
		case ierr != nil:
			return nil, nil, fmt.Errorf("backend %s: %w", r.Name, ierr)
		default:
			backends = append(backends, b)
		}
	}
	return backends, skipped, nil
}
