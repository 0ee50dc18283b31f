// Package journal is what a suspend and a resume share on disk and with
// their callers: the host-wide lock that serialises ckpt runs, the
// journal of what a suspend froze (so that a crashed run can be undone),
// and the progress events both report. checkpoint and restore import it;
// neither imports the other.
package journal
