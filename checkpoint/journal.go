package checkpoint

import "github.com/ckpt-dev/ckpt/journal"

// The journal, the lock and the progress events live in package journal,
// which restore shares; these names are the checkpoint API's.
type (
	// Journal is journal.Journal.
	Journal = journal.Journal
	// Event is journal.Event.
	Event = journal.Event
)

// DefaultJournal and the journal's states: see package journal.
const (
	DefaultJournal = journal.DefaultJournal
	StateFreezing  = journal.StateFreezing
	StateFrozen    = journal.StateFrozen
	StateCommitted = journal.StateCommitted
)

// ReadJournal reads the journal at path; (nil, nil) if there is none.
func ReadJournal(path string) (*Journal, error) { return journal.Read(path) }

// Lock takes the host-wide ckpt lock (journal.Lock).
func Lock() (unlock func(), err error) { return journal.Lock() }
