package main

import (
	"bytes"
	"testing"

	"github.com/ckpt-dev/ckpt/checkpoint"
)

func TestProgressBar(t *testing.T) {
	e := checkpoint.Event{Phase: "progress", Bytes: 1 << 30, Total: 4 << 30, Elapsed: 2}
	got := progressBar(e, 20)
	want := "dump [#####---------------]  25%  1.0 GiB / 4.0 GiB  537 MB/s  ETA 6s"
	if got != want {
		t.Fatalf("bar\n got %q\nwant %q", got, want)
	}
	// Nothing written yet: no rate, no ETA, an empty bar.
	if got := progressBar(checkpoint.Event{Total: 1 << 20}, 4); got != "dump [----]   0%  0 B / 1.0 MiB  -  ETA -" {
		t.Fatalf("empty bar %q", got)
	}
}

// TestTermWriterClearsBar: a log line written while a bar is shown first
// erases the bar, so the two never share a line.
func TestTermWriterClearsBar(t *testing.T) {
	var out bytes.Buffer
	tw := newTermWriter(&out)
	tw.draw("dump [##--]")
	tw.draw("dump [###-]")
	tw.Write([]byte("level=INFO msg=progress phase=seal\n"))
	tw.Write([]byte("next line\n"))
	tw.draw("dump [####]")
	var stdout bytes.Buffer
	tw.sharing(&stdout).Write([]byte("suspend done\n"))
	want := "\r\033[Kdump [##--]\r\033[Kdump [###-]\r\033[Klevel=INFO msg=progress phase=seal\nnext line\n\r\033[Kdump [####]\r\033[K"
	if out.String() != want {
		t.Fatalf("terminal got %q\nwant %q", out.String(), want)
	}
	if stdout.String() != "suspend done\n" {
		t.Fatalf("stdout %q", stdout.String())
	}
}
