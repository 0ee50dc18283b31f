package memregion

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Raw layout on a device (/dev/pmemN) or a file of fixed size:
//
//	0        superblock (4 KiB)
//	1 MiB    data: object extents, then the manifest, bump-allocated
//
// The superblock is rewritten at two moments only: Seal (points it at the
// new manifest; the commit point) and Release (clears the pointer).
// Objects are placed by a bump allocator; a region holds one checkpoint.
const (
	rawSuperblockLen = 4096
	rawDataStart     = 1 * MiB
	rawChunk         = 64 * MiB // allocation unit when the size is unknown
	rawMinSize       = 8 * MiB
)

// Superblock framing (little endian):
//
//	0  magic "CKPTREG\x00"
//	8  format uint32
//	12 flags uint32: none are defined; a region with any set is refused
//	16 size uint64: device bytes at format time
//	24 id [16]byte
//	40 generation uint64: bumped by every seal and release
//	48 manifest offset uint64 (0: no checkpoint)
//	56 manifest length uint64
//	64 manifest crc32c uint32 (of the framed manifest)
//	68 crc32c of bytes 0..68
const superblockUsed = 72

var superMagic = [8]byte{'C', 'K', 'P', 'T', 'R', 'E', 'G', 0}

type superblock struct {
	Format      uint32
	Flags       uint32
	Size        uint64
	ID          [16]byte
	Generation  uint64
	ManifestOff uint64
	ManifestLen uint64
	ManifestCRC uint32
}

func (s *superblock) encode() []byte {
	b := make([]byte, rawSuperblockLen)
	copy(b, superMagic[:])
	le := binary.LittleEndian
	le.PutUint32(b[8:], s.Format)
	le.PutUint32(b[12:], s.Flags)
	le.PutUint64(b[16:], s.Size)
	copy(b[24:40], s.ID[:])
	le.PutUint64(b[40:], s.Generation)
	le.PutUint64(b[48:], s.ManifestOff)
	le.PutUint64(b[56:], s.ManifestLen)
	le.PutUint32(b[64:], s.ManifestCRC)
	le.PutUint32(b[68:], crc32.Checksum(b[:68], castagnoli))
	return b
}

// parseSuperblock never panics on garbage.
func parseSuperblock(b []byte) (*superblock, error) {
	if len(b) < superblockUsed {
		return nil, fmt.Errorf("%w: superblock truncated", ErrCorrupt)
	}
	if !bytes.Equal(b[:8], superMagic[:]) {
		return nil, fmt.Errorf("%w: no ckpt superblock", ErrNotFormatted)
	}
	le := binary.LittleEndian
	if got, want := crc32.Checksum(b[:68], castagnoli), le.Uint32(b[68:]); got != want {
		return nil, fmt.Errorf("%w: superblock checksum mismatch (%08x, recorded %08x)", ErrCorrupt, got, want)
	}
	s := &superblock{
		Format:      le.Uint32(b[8:]),
		Flags:       le.Uint32(b[12:]),
		Size:        le.Uint64(b[16:]),
		Generation:  le.Uint64(b[40:]),
		ManifestOff: le.Uint64(b[48:]),
		ManifestLen: le.Uint64(b[56:]),
		ManifestCRC: le.Uint32(b[64:]),
	}
	copy(s.ID[:], b[24:40])
	if s.Format != FormatVersion {
		return nil, fmt.Errorf("%w: region format %d, this ckpt reads %d", ErrVersion, s.Format, FormatVersion)
	}
	if s.Flags != 0 {
		return nil, fmt.Errorf("%w: superblock has flags %#x this ckpt does not know", ErrVersion, s.Flags)
	}
	if s.Size < uint64(rawMinSize) || s.Size > maxRawSize {
		return nil, fmt.Errorf("%w: superblock records an implausible size %d", ErrCorrupt, s.Size)
	}
	if s.ManifestOff == 0 {
		return s, nil
	}
	if s.ManifestLen > uint64(manifestHeaderLen+maxManifest) {
		return nil, fmt.Errorf("%w: superblock records a %d-byte manifest, above the %s limit", ErrCorrupt, s.ManifestLen, HumanBytes(manifestHeaderLen+maxManifest))
	}
	if s.ManifestOff < uint64(rawDataStart) || s.ManifestLen < manifestHeaderLen || s.ManifestOff > s.Size-s.ManifestLen {
		return nil, fmt.Errorf("%w: superblock points outside the region", ErrCorrupt)
	}
	return s, nil
}

// maxRawSize bounds the size a superblock may record (64 PiB).
const maxRawSize = 1 << 56

type rawStore struct {
	f    *os.File
	path string
	size int64  // usable bytes (superblock's size)
	m    []byte // shared mapping of [0, size): objects are copied into it

	mu   sync.Mutex // guards sb and next
	sb   superblock
	next int64 // bump pointer
}

func deviceSize(f *os.File) (int64, error) {
	return f.Seek(0, io.SeekEnd)
}

func mustHex(s string) []byte {
	b, _ := hex.DecodeString(s)
	return b
}

// openDevice opens a raw region's path, which must be a regular file or
// a block device: anything else (a FIFO, socket or character device) is
// refused before it is opened, and again after, without blocking.
func openDevice(path string, flag int) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if m := fi.Mode(); !m.IsRegular() && (m&fs.ModeDevice == 0 || m&fs.ModeCharDevice != 0) {
		return nil, &UnsafeError{path, "is " + fileType(uint32(fi.Sys().(*syscall.Stat_t).Mode)) + "; a raw region is a regular file or a block device"}
	}
	fd, err := unix.Open(path, flag|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	if t := st.Mode & unix.S_IFMT; err == nil && t != unix.S_IFREG && t != unix.S_IFBLK {
		err = &UnsafeError{path, "is " + fileType(st.Mode) + "; a raw region is a regular file or a block device"}
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openRaw opens a raw region; read-only, it neither writes nor maps it.
func openRaw(path string, readOnly bool) (*rawStore, error) {
	flag := unix.O_RDWR
	if readOnly {
		flag = unix.O_RDONLY
	}
	f, err := openDevice(path, flag)
	if err != nil {
		return nil, err
	}
	sb, err := readSuperblock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	have, err := deviceSize(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if uint64(have) < sb.Size {
		f.Close()
		return nil, fmt.Errorf("%w: %s has %d bytes, the region was formatted with %d (different reservation?)", ErrCorrupt, path, have, sb.Size)
	}
	s := &rawStore{f: f, path: path, size: int64(sb.Size), sb: *sb, next: rawDataStart}
	if readOnly {
		return s, nil
	}
	if s.m, err = unix.Mmap(int(f.Fd()), 0, int(sb.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	// Huge pages halve the copy's cost where the backing store offers
	// them (tmpfs huge=advise); elsewhere this is a no-op.
	_ = unix.Madvise(s.m, unix.MADV_HUGEPAGE)
	return s, nil
}

func readSuperblock(f *os.File) (*superblock, error) {
	b := make([]byte, rawSuperblockLen)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return parseSuperblock(b)
}

func (s *rawStore) kind() string { return "raw" }
func (s *rawStore) id() string   { return hex.EncodeToString(s.sb.ID[:]) }
func (s *rawStore) close() error {
	var err error
	if s.m != nil {
		err = unix.Munmap(s.m)
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// alloc reserves n bytes (or less if the region has less, but never 0).
func (s *rawStore) alloc(n int64) (Extent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	free := s.size - s.next
	if free <= 0 {
		return Extent{}, fmt.Errorf("%w: %s is full (%s)", ErrNoSpace, s.path, HumanBytes(s.size))
	}
	e := Extent{Off: s.next, Len: min(n, free)}
	s.next += e.Len
	return e, nil
}

// populate faults an extent's pages in with one call, so that a backing
// store that cannot supply them returns an error here instead of SIGBUS
// in the copy, and the copy itself takes no page faults.
func (s *rawStore) populate(e Extent) error {
	err := unix.Madvise(s.m[e.Off:e.Off+e.Len], unix.MADV_POPULATE_WRITE)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL): // EINVAL: kernel < 5.14, fault lazily
		return nil
	case errors.Is(err, unix.ENOMEM), errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("%w: %s cannot back %s: %v", ErrNoSpace, s.path, HumanBytes(e.Len), err)
	}
	return fmt.Errorf("populating %s: %w", s.path, err)
}

// giveBack returns the unused tail of e when nothing was allocated after it.
func (s *rawStore) giveBack(e Extent, used int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == e.Off+e.Len {
		s.next = e.Off + used
	}
}

func (s *rawStore) newObject(_ string, sizeHint int64) (sink, error) {
	return &rawSink{s: s, hint: sizeHint}, nil
}

type rawSink struct {
	s    *rawStore
	hint int64
	ext  []Extent // all but the last are full
	used int64    // bytes used of the last extent
}

func (w *rawSink) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if len(w.ext) == 0 || w.used == w.ext[len(w.ext)-1].Len {
			have := int64(0)
			for _, e := range w.ext {
				have += e.Len
			}
			// Without a hint, extents double from 1 MiB up to rawChunk,
			// so an object wastes at most about half its size while
			// other writers allocate behind it.
			want := min(max(MiB, have), rawChunk)
			if rest := w.hint - have; rest > 0 {
				want = rest
			}
			want = max(want, int64(len(p)))
			e, err := w.s.alloc(want)
			if err != nil {
				return written, err
			}
			if err := w.s.populate(e); err != nil {
				w.s.giveBack(e, 0)
				return written, err
			}
			if n := len(w.ext); n > 0 && w.ext[n-1].Off+w.ext[n-1].Len == e.Off {
				w.ext[n-1].Len += e.Len // contiguous: grow the extent
			} else {
				w.ext = append(w.ext, e)
				w.used = 0
			}
		}
		last := w.ext[len(w.ext)-1]
		n := copy(w.s.m[last.Off+w.used:last.Off+last.Len], p)
		w.used += int64(n)
		written += n
		p = p[n:]
	}
	return written, nil
}

func (w *rawSink) finish() ([]Extent, error) {
	if len(w.ext) == 0 {
		return nil, nil
	}
	last := &w.ext[len(w.ext)-1]
	w.s.giveBack(*last, w.used)
	last.Len = w.used
	if last.Len == 0 {
		w.ext = w.ext[:len(w.ext)-1]
	}
	return w.ext, nil
}

func (w *rawSink) abort() {
	if n := len(w.ext); n > 0 {
		w.s.giveBack(w.ext[n-1], 0)
	}
}

// checkManifest refuses a manifest with an object outside the data area.
func (s *rawStore) checkManifest(m *Manifest) error {
	for _, o := range m.Objects {
		if err := s.checkExtents(o); err != nil {
			return fmt.Errorf("%w: manifest: %w", ErrCorrupt, err)
		}
	}
	return nil
}

// checkExtents checks that every extent of o lies in the data area,
// without overflow.
func (s *rawStore) checkExtents(o ObjectInfo) error {
	if o.Size > 0 && len(o.Extents) == 0 {
		return &ObjectError{o.Name, "missing: the manifest records no extents", ErrCorrupt}
	}
	for _, e := range o.Extents {
		if e.Off < rawDataStart || e.Len < 0 || e.Off > s.size || e.Len > s.size-e.Off {
			return &ObjectError{o.Name, fmt.Sprintf("missing: extent %d+%d lies outside the region", e.Off, e.Len), ErrCorrupt}
		}
	}
	return nil
}

func (s *rawStore) openObject(o ObjectInfo) (io.ReadCloser, error) {
	if err := s.checkExtents(o); err != nil {
		return nil, err
	}
	rs := make([]io.Reader, 0, len(o.Extents))
	for _, e := range o.Extents {
		rs = append(rs, io.NewSectionReader(s.f, e.Off, e.Len))
	}
	return io.NopCloser(io.MultiReader(rs...)), nil
}

func (s *rawStore) readManifest() ([]byte, error) {
	sb, err := readSuperblock(s.f)
	if err != nil {
		return nil, err
	}
	if sb.ManifestOff == 0 {
		return nil, ErrNotSealed
	}
	if sb.Size != uint64(s.size) {
		return nil, fmt.Errorf("%w: superblock size changed from %d to %d while open", ErrCorrupt, s.size, sb.Size)
	}
	b := make([]byte, sb.ManifestLen)
	if _, err := s.f.ReadAt(b, int64(sb.ManifestOff)); err != nil {
		return nil, fmt.Errorf("%w: reading manifest: %v", ErrCorrupt, err)
	}
	if got := crc32.Checksum(b, castagnoli); got != sb.ManifestCRC {
		// Parse anyway for the most precise error; fall back to this one.
		if _, perr := decodeManifest(b); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("%w: manifest checksum mismatch (%08x, superblock records %08x)", ErrCorrupt, got, sb.ManifestCRC)
	}
	return b, nil
}

func (s *rawStore) commit(manifest []byte) error {
	// Objects first: everything before the superblock must be durable.
	s.mu.Lock()
	used := s.next
	s.mu.Unlock()
	if err := unix.Msync(s.m[:used], unix.MS_SYNC); err != nil {
		return fmt.Errorf("msync %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	e, err := s.alloc(int64(len(manifest)))
	if err != nil {
		return fmt.Errorf("writing manifest: %w", err)
	}
	if e.Len < int64(len(manifest)) {
		s.giveBack(e, 0)
		return fmt.Errorf("%w: no room for the %d-byte manifest", ErrNoSpace, len(manifest))
	}
	if _, err := s.f.WriteAt(manifest, e.Off); err != nil {
		s.giveBack(e, 0)
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	sb.Generation++
	sb.ManifestOff, sb.ManifestLen = uint64(e.Off), uint64(len(manifest))
	sb.ManifestCRC = crc32.Checksum(manifest, castagnoli)
	if err := s.writeSuperblock(sb); err != nil {
		return err
	}
	return nil
}

func (s *rawStore) writeSuperblock(sb superblock) error {
	if _, err := s.f.WriteAt(sb.encode(), 0); err != nil {
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.mu.Lock()
	s.sb = sb
	s.mu.Unlock()
	return nil
}

func (s *rawStore) discard(_ []ObjectInfo) error {
	s.mu.Lock()
	s.next = rawDataStart
	s.mu.Unlock()
	return nil
}

func (s *rawStore) release(_ []ObjectInfo) error {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	sb.Generation++
	sb.ManifestOff, sb.ManifestLen, sb.ManifestCRC = 0, 0, 0
	if err := s.writeSuperblock(sb); err != nil {
		return err
	}
	return s.discard(nil)
}

func (s *rawStore) space() (int64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := s.size - rawDataStart
	// Keep room for the manifest (generous: 1 MiB + 1/1024 of the region).
	free := s.size - s.next - MiB - s.size/1024
	return total, max(free, 0), nil
}
