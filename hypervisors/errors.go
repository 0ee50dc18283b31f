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
)
