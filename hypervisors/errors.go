package hypervisors

import "errors"

var (
	// ErrSkipBackend is wrapped by an Init that cannot run on this host
	// ("criu < 4.2", "no runc"); the engine skips that backend.
	ErrSkipBackend = errors.New("backend skipped")
	// ErrNotFound means the workload no longer exists.
	ErrNotFound = errors.New("workload not found")
	// ErrNotCheckpointable is wrapped by a Preflight that finds a workload
	// that cannot be suspended, with the reason.
	ErrNotCheckpointable = errors.New("workload cannot be checkpointed")
	// ErrNotSupported is wrapped by an optional ability (PreDump, …) that
	// this host cannot provide; the engine goes on without it.
	ErrNotSupported = errors.New("not supported on this host")
)
