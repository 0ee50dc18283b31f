package memregion

import (
	"fmt"
	"time"
)

// WriteRate writes n bytes (at most half the free space) from a
// pre-touched buffer into the region the way objects are written, without
// the checksum, and gives the space back: the memcpy into this region
// that a dump's rate is compared with (on pmem, into the device's memory;
// on tmpfs, into fresh pages; on a disk, into the page cache). It returns
// GB/s. The region must hold no committed checkpoint.
func (r *Region) WriteRate(n int64) (float64, error) {
	if err := r.discardable(); err != nil {
		return 0, err
	}
	if _, free, err := r.Space(); err != nil {
		return 0, err
	} else if n = min(n, free/2); n <= 0 {
		return 0, fmt.Errorf("%w: no room in %s to measure a write", ErrNoSpace, r.path)
	}
	buf := make([]byte, 4*MiB)
	for i := range buf {
		buf[i] = byte(i)
	}
	s, err := r.st.newObject("ckpt-write-rate."+newID()[:8], n)
	if err != nil {
		return 0, err
	}
	defer s.abort()
	start := time.Now()
	for left := n; left > 0; {
		k, err := s.Write(buf[:min(left, int64(len(buf)))])
		if err != nil {
			return 0, err
		}
		left -= int64(k)
	}
	return float64(n) / time.Since(start).Seconds() / 1e9, nil
}
