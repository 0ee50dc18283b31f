package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sys/unix"
)

// plainEvery is how often progress is logged when stderr is not a
// terminal (a log file, journald).
const plainEvery = 5 * time.Second

// termWriter is stderr when it is a terminal: a progress bar is drawn in
// place on its last line, and anything else written first clears it, so
// log lines and the bar do not mix. Writers made by sharing (stdout on the
// same terminal) clear it too.
type termWriter struct {
	st *barState
	w  io.Writer
}

type barState struct {
	mu  sync.Mutex
	out io.Writer // where the bar is drawn
	bar bool      // a bar is on the last line
}

func newTermWriter(w io.Writer) *termWriter { return &termWriter{st: &barState{out: w}, w: w} }

func (t *termWriter) Write(p []byte) (int, error) {
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	if t.st.bar {
		io.WriteString(t.st.out, "\r\033[K")
		t.st.bar = false
	}
	return t.w.Write(p)
}

func (t *termWriter) draw(line string) {
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	io.WriteString(t.st.out, "\r\033[K"+line)
	t.st.bar = true
}

// sharing wraps another writer on the same terminal.
func (t *termWriter) sharing(w io.Writer) io.Writer { return &termWriter{st: t.st, w: w} }

// isTerminal reports whether f is a terminal that can redraw a line.
func isTerminal(f *os.File) bool {
	if os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// stderr is where logs and progress go: a termWriter on a terminal.
func (g *globals) stderr() io.Writer {
	g.once.Do(func() {
		g.errw = os.Stderr
		if !g.json && isTerminal(os.Stderr) {
			g.term = newTermWriter(os.Stderr)
			g.errw = g.term
		}
	})
	return g.errw
}

// events renders the engine's progress: JSON lines on w with --json; on a
// terminal a bar with bytes, rate and ETA; otherwise log lines, the dump's
// progress every plainEvery.
func (g *globals) events(w io.Writer, log *slog.Logger) func(checkpoint.Event) {
	g.stderr()
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	var lastPlain time.Time
	return func(e checkpoint.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case g.json:
			enc.Encode(map[string]any{"event": e})
		case e.Phase == "progress" && g.term != nil:
			g.term.draw(progressBar(e, 30))
		case e.Phase == "progress":
			if time.Since(lastPlain) >= plainEvery {
				lastPlain = time.Now()
				done, total, rate, eta := progressFigures(e)
				log.Info("progress", "phase", "dump", "done", done, "total", total, "rate", rate, "eta", eta)
			}
		default:
			logEvent(log, e)
		}
	}
}

func logEvent(log *slog.Logger, e checkpoint.Event) {
	attrs := []any{"phase", e.Phase}
	if e.Workload != "" {
		attrs = append(attrs, "workload", e.Workload)
	}
	if e.Bytes > 0 {
		attrs = append(attrs, "bytes", memregion.HumanBytes(e.Bytes))
	}
	if e.Elapsed > 0 {
		attrs = append(attrs, "took", fmt.Sprintf("%.2fs", e.Elapsed))
	}
	if e.Error != "" {
		log.Warn("progress", append(attrs, "error", e.Error)...)
		return
	}
	log.Info("progress", attrs...)
}

// progressFigures are a progress event's done and total bytes, rate and
// time left, for people.
func progressFigures(e checkpoint.Event) (done, total, rate, eta string) {
	done, total, rate, eta = memregion.HumanBytes(e.Bytes), memregion.HumanBytes(e.Total), "-", "-"
	if e.Elapsed > 0 && e.Bytes > 0 {
		bps := float64(e.Bytes) / e.Elapsed
		rate = fmt.Sprintf("%.0f MB/s", bps/1e6)
		left := max(e.Total-e.Bytes, 0)
		eta = (time.Duration(float64(left) / bps * 1e9)).Round(100 * time.Millisecond).String()
	}
	return done, total, rate, eta
}

// progressBar is one line: "dump [#####-----] 1.2 GiB / 3.0 GiB  850 MB/s  ETA 2s".
func progressBar(e checkpoint.Event, width int) string {
	frac := 0.0
	if e.Total > 0 {
		frac = min(float64(e.Bytes)/float64(e.Total), 1)
	}
	n := int(frac * float64(width))
	done, total, rate, eta := progressFigures(e)
	return fmt.Sprintf("dump [%s%s] %3.0f%%  %s / %s  %s  ETA %s",
		strings.Repeat("#", n), strings.Repeat("-", width-n), frac*100, done, total, rate, eta)
}
