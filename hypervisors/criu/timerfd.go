package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/timerfd"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"google.golang.org/protobuf/proto"
)

// CRIU (4.2.1 and before) restores a periodic timerfd disarmed when it had
// expired, unread, at the dump. CRIU takes it_value from the timerfd's
// /proc/PID/fdinfo, which shows the time left on the kernel's hrtimer;
// unlike timerfd_gettime(2) it does not forward an expired periodic timer
// (the kernel forwards it only when the fd is read), so it says 0 there.
// CRIU then arms the new timerfd with it_value 0, which disarms it, and
// sets the pending ticks: the workload reads them once and then waits
// forever. A workload frozen for longer than its period before its dump
// (ckpt's freeze, then the dumps of the others) nearly always meets it.
// See docs/upstream/criu-timerfd.md.
//
// rearmTimerfds works around it before a restore: such an entry (relative,
// it_value 0, it_interval not 0) gets it_value = it_interval, so the timer
// fires one period after the restore, as it would have one period after
// its pending ticks were read. Absolute timers are left alone: CRIU adds
// the current time's seconds to their it_value, so they fire at once.
//
// The entries are decoded and encoded with crit's image types
// (crit/images/...), but framed here: the crit package itself cannot be
// linked next to go-criu/v7/stats (dump.go), both register
// "stats/stats.proto" and the program panics at init. Entries that need
// no change keep their bytes.

// tfdTimerAbstime is TFD_TIMER_ABSTIME, a settime flag.
const tfdTimerAbstime = 1

// maxTimerfdImage bounds the size of an image read here (files.img holds
// one small entry per open file description).
const maxTimerfdImage = 64 << 20

// timerfdImage is an image that can hold timerfd entries.
type timerfdImage struct {
	name, magic string
	timerfd     func(payload []byte) (proto.Message, *timerfd.TimerfdEntry, error)
}

// timerfdImages: files.img (TIMERFD file entries, what CRIU writes now)
// and tfd.img (the older layout, which CRIU still reads).
var timerfdImages = []timerfdImage{
	{"files.img", "FILES", func(b []byte) (proto.Message, *timerfd.TimerfdEntry, error) {
		var e fdinfo.FileEntry
		err := proto.Unmarshal(b, &e)
		return &e, e.GetTfd(), err
	}},
	{"tfd.img", "TIMERFD", func(b []byte) (proto.Message, *timerfd.TimerfdEntry, error) {
		var e timerfd.TimerfdEntry
		err := proto.Unmarshal(b, &e)
		return &e, &e, err
	}},
}

// rearmTimerfds returns the images directory to restore from: img itself,
// or, when a timerfd in it would come back disarmed, a directory under
// work in which the image holding it is rewritten and every other entry
// is a symlink to img's. img is never written: in a directory region it
// holds the verified objects themselves, whose checksums must still match
// for a retry. On failure it logs and returns img, and the restore goes
// on as it would without the workaround.
func (r *Runtime) rearmTimerfds(w hypervisors.Workload, img, work string) string {
	dir, n, err := RearmTimerfdImages(img, filepath.Join(work, "images-rearmed"))
	if err != nil {
		r.log.Warn("periodic timerfds in the images may come back disarmed", "workload", w.ID, "err", err)
		return img
	}
	if n > 0 {
		r.log.Info("re-armed expired periodic timerfds", "workload", w.ID, "timerfds", n)
	}
	return dir
}

// RearmTimerfdImages rewrites (for any CRIU restore of the images, runc's
// through containerd too) the timerfd entries of the images in img
// that CRIU would restore disarmed into an overlay directory, and returns
// that directory and how many it rewrote, or img and 0 if none needs it.
func RearmTimerfdImages(img, overlay string) (string, int, error) {
	fixed := map[string][]byte{}
	total := 0
	for _, ti := range timerfdImages {
		b, n, err := rearmImage(filepath.Join(img, ti.name), ti)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return img, 0, fmt.Errorf("%s: %w", ti.name, err)
		}
		if n > 0 {
			fixed[ti.name] = b
			total += n
		}
	}
	if total == 0 {
		return img, 0, nil
	}
	if err := writeOverlay(img, overlay, fixed); err != nil {
		os.RemoveAll(overlay)
		return img, 0, err
	}
	return overlay, total, nil
}

// rearmImage reads the image at path (two magics, then entries of a
// 4-byte little-endian length and a protobuf payload) and returns it with
// its timerfd entries re-armed, and how many it re-armed.
func rearmImage(path string, ti timerfdImage) ([]byte, int, error) {
	b, err := readImage(path)
	if err != nil {
		return nil, 0, err
	}
	m := magic.LoadMagic()
	if len(b) < 8 || uint64(binary.LittleEndian.Uint32(b)) != m.ByName["IMG_COMMON"] ||
		uint64(binary.LittleEndian.Uint32(b[4:])) != m.ByName[ti.magic] {
		return nil, 0, fmt.Errorf("not a %s image", ti.magic)
	}
	out := append([]byte(nil), b[:8]...)
	n := 0
	for off := 8; off < len(b); {
		if len(b)-off < 4 {
			return nil, 0, fmt.Errorf("truncated entry header at %d", off)
		}
		size := int(binary.LittleEndian.Uint32(b[off:]))
		if size > len(b)-off-4 {
			return nil, 0, fmt.Errorf("entry at %d of %d bytes overruns the image", off, size)
		}
		payload := b[off+4 : off+4+size]
		off += 4 + size
		e, t, err := ti.timerfd(payload)
		if err != nil {
			return nil, 0, fmt.Errorf("entry at %d: %w", off-4-size, err)
		}
		if t != nil && rearm(t) {
			if payload, err = proto.Marshal(e); err != nil {
				return nil, 0, err
			}
			n++
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(payload)))
		out = append(out, payload...)
	}
	return out, n, nil
}

// readImage reads a regular file of at most maxTimerfdImage bytes.
func readImage(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > maxTimerfdImage {
		return nil, fmt.Errorf("not a regular file of at most %d bytes", maxTimerfdImage)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

// rearm gives a relative periodic timer whose it_value is 0 (expired and
// not yet forwarded at the dump) one period to its next expiration.
func rearm(t *timerfd.TimerfdEntry) bool {
	if t.GetVsec() != 0 || t.GetVnsec() != 0 || (t.GetIsec() == 0 && t.GetInsec() == 0) ||
		t.GetSettimeFlags()&tfdTimerAbstime != 0 {
		return false
	}
	t.Vsec, t.Vnsec = proto.Uint64(t.GetIsec()), proto.Uint64(t.GetInsec())
	return true
}

// writeOverlay makes overlay a copy of the directory img in which the
// images in fixed have their new contents and every other entry is a
// symlink to img's (CRIU opens images without O_NOFOLLOW). The links are
// relative: CRIU reads some images (pagemap, pages) from inside the
// restored tasks, whose root is the container's, where an absolute link
// would point at nothing; a relative one is resolved from the overlay's
// directory wherever that is. CRIU's own restore output (stats-restore)
// is left out, so that it is written into the overlay, never through a
// link into img.
func writeOverlay(img, overlay string, fixed map[string][]byte) error {
	if err := os.MkdirAll(overlay, 0o700); err != nil {
		return err
	}
	// Physical paths, since the kernel resolves a link's ".." physically.
	src, err := filepath.EvalSymlinks(img)
	if err != nil {
		return err
	}
	dst, err := filepath.EvalSymlinks(overlay)
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(dst, src)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if b, ok := fixed[name]; ok {
			if err := writeNew(filepath.Join(overlay, name), b); err != nil {
				return err
			}
			continue
		}
		if name == "stats-restore" {
			continue
		}
		if err := os.Symlink(filepath.Join(rel, name), filepath.Join(overlay, name)); err != nil {
			return err
		}
	}
	return nil
}

func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
