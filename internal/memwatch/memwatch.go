// Package memwatch samples how much memory the host uses beyond what it
// used when the watch began: the extra RAM a dump or a restore takes
// (staging directories, tools' buffers, page cache) besides the region.
package memwatch

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sys/unix"
)

// Interval is how often a watch samples MemAvailable.
var Interval = 20 * time.Millisecond

// Available is MemAvailable from /proc/meminfo (0 if unknown).
func Available() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

// Use is what a watch saw: the memory used beyond the start, at its peak
// and at the end (in bytes; negative when memory was freed).
type Use struct {
	Peak, Last int64
}

// AboveEnd is how far the peak rose above the end: the transient part, for
// a restore whose workloads keep the rest (their own memory, back).
func (u Use) AboveEnd() int64 { return max(0, u.Peak-max(u.Last, 0)) }

// Watch samples, until stop, how much memory the host uses beyond what it
// used at the start, less what the region at path grew where it is RAM
// (a tmpfs, whose files are the region's own bytes).
func Watch(path string) (stop func() Use) {
	inRAM := false
	if sv, err := memregion.Survives(path); err == nil {
		inRAM = strings.HasPrefix(sv.Medium, "tmpfs ") || strings.HasPrefix(sv.Medium, "ramfs ")
	}
	// What the filesystem holding a RAM region uses (a raw file there was
	// allocated up front, and takes no more as it is written).
	used := func() int64 {
		var st unix.Statfs_t
		if !inRAM || unix.Statfs(path, &st) != nil {
			return 0
		}
		return int64(st.Blocks-st.Bfree) * st.Bsize
	}
	return Start(Available, used, Interval)
}

// Start samples avail and regionUsed every interval until stop, which
// returns the peak and last of (avail's drop − regionUsed's growth) since
// the start.
func Start(avail, regionUsed func() int64, interval time.Duration) (stop func() Use) {
	base, base0 := avail(), regionUsed()
	if base == 0 {
		return func() Use { return Use{} }
	}
	var u Use
	sample := func() {
		if a := avail(); a > 0 {
			u.Last = base - a - (regionUsed() - base0)
			u.Peak = max(u.Peak, u.Last)
		}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() Use {
		close(done)
		<-exited
		sample()
		return u
	}
}
