package journal

import "time"

// Event is one step of progress, for progress bars and JSON lines.
type Event struct {
	Time     time.Time `json:"time"`
	Phase    string    `json:"phase"` // plan, predump, freeze, dump, progress, seal, finish, rollback, done; verify, running (a lazy restore's workload runs), restore, release
	Workload string    `json:"workload,omitempty"`
	Bytes    int64     `json:"bytes,omitempty"`
	// Total is, in "progress" events, the bytes the plan expects to dump
	// (Bytes is what the region has received so far).
	Total   int64   `json:"total,omitempty"`
	Elapsed float64 `json:"elapsed_s,omitempty"`
	Error   string  `json:"error,omitempty"`
}

// Emit stamps e and passes it to fn (which may be nil).
func Emit(fn func(Event), e Event) {
	if fn != nil {
		e.Time = time.Now()
		fn(e)
	}
}
