package memregion

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// store is one way of keeping objects and the manifest: a directory or a
// raw device. Region adds naming, checksums and the commit protocol.
type store interface {
	kind() string
	id() string
	newObject(name string, sizeHint int64) (sink, error)
	openObject(o ObjectInfo) (io.ReadCloser, error)
	// readManifest returns the framed manifest or ErrNotSealed.
	readManifest() ([]byte, error)
	// checkManifest refuses object locations this store cannot hold.
	checkManifest(m *Manifest) error
	// commit makes objects durable, then writes the manifest: the commit point.
	commit(manifest []byte) error
	// discard drops uncommitted objects.
	discard(objs []ObjectInfo) error
	// release drops the committed manifest, then the objects.
	release(objs []ObjectInfo) error
	space() (total, free int64, err error)
	close() error
}

// sink receives one object's bytes in order.
type sink interface {
	io.Writer
	// finish makes the object complete and returns where it lives.
	finish() ([]Extent, error)
	// abort gives the space back.
	abort()
}

// Options configure Open and Format.
type Options struct {
	// Logger receives debug records; nil discards them.
	Logger *slog.Logger
	// ReadOnly opens the region O_RDONLY (a write-protected file or
	// device can be inspected and verified); calls that would change it
	// fail with ErrReadOnly. Format ignores it.
	ReadOnly bool
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Region is an open ckpt region. Its methods are safe for concurrent use;
// each ObjectWriter belongs to one goroutine. Close must be called.
type Region struct {
	st       store
	path     string
	log      *slog.Logger
	readOnly bool

	mu      sync.Mutex
	writing map[string]bool
	done    []ObjectInfo
	names   map[string]bool

	streamed atomic.Int64 // bytes written through ObjectWriters
}

// Streamed is how many bytes object writers have written into the region
// since it was opened (files adopted from a dir region are not counted:
// their writers bypass the region).
func (r *Region) Streamed() int64 { return r.streamed.Load() }

// Written is a count of the bytes written into the region, to follow a
// dump by its growth: where programs write objects as files, what the
// filesystem uses (files written in place grow it); in the raw layout,
// whose space is reserved ahead of the writes, the bytes streamed.
func (r *Region) Written() (int64, error) {
	if _, ok := r.files(); ok {
		total, free, err := r.Space()
		return total - free, err
	}
	return r.Streamed(), nil
}

// Kind is KindDir, KindRaw or KindFS, for people: what a region can do
// is asked of it (DirectFiles, Written, Survives), not of its kind.
func (r *Region) Kind() string { return r.st.kind() }

// Path is where the region lives.
func (r *Region) Path() string { return r.path }

// ID is the region's identity, fixed when it was formatted.
func (r *Region) ID() string { return r.st.id() }

// writable refuses a change to a region opened read-only.
func (r *Region) writable(op string) error {
	if r.readOnly {
		return fmt.Errorf("%s: %w: %s", op, ErrReadOnly, r.path)
	}
	return nil
}

// Close releases the region's resources; it neither seals nor discards.
func (r *Region) Close() error { return r.st.close() }

// Space reports the region's capacity and the bytes still free for objects.
func (r *Region) Space() (total, free int64, err error) { return r.st.space() }

// Fits returns nil when n more bytes of objects fit, and an error wrapping
// ErrNoSpace that says how much is missing when they do not. Callers ask
// before freezing anything.
func (r *Region) Fits(n int64) error {
	_, free, err := r.st.space()
	if err != nil {
		return err
	}
	if n > free {
		return fmt.Errorf("%w: need %s, %s free in %s", ErrNoSpace, HumanBytes(n), HumanBytes(free), r.path)
	}
	return nil
}

// Sealed reports whether the region holds a committed checkpoint (it does
// not verify it; see Verify).
func (r *Region) Sealed() (bool, error) {
	_, err := r.st.readManifest()
	if errors.Is(err, ErrNotSealed) {
		return false, nil
	}
	return err == nil, err
}

// Manifest reads and parses the committed manifest without reading the
// objects. It returns ErrNotSealed when there is none.
func (r *Region) Manifest() (*Manifest, error) {
	b, err := r.st.readManifest()
	if err != nil {
		return nil, err
	}
	m, err := decodeManifest(b)
	if err != nil {
		return nil, err
	}
	if err := r.st.checkManifest(m); err != nil {
		return nil, err
	}
	return m, nil
}

// Create starts a new object. sizeHint (0 if unknown) lets the raw layout
// place the object in one extent. The region must not hold a committed
// checkpoint. The writer must be closed (committing the object) or aborted.
func (r *Region) Create(name string, sizeHint int64) (*ObjectWriter, error) {
	if err := r.writable("create"); err != nil {
		return nil, err
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	if sealed, err := r.Sealed(); err != nil {
		return nil, err
	} else if sealed {
		return nil, fmt.Errorf("%w: %s (release it first)", ErrSealed, r.path)
	}
	r.mu.Lock()
	if r.names[name] {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrObjectExists, name)
	}
	r.names[name] = true
	r.writing[name] = true
	r.mu.Unlock()
	s, err := r.st.newObject(name, sizeHint)
	if err != nil {
		r.forget(name)
		return nil, fmt.Errorf("create %q: %w", name, err)
	}
	return &ObjectWriter{r: r, name: name, s: s, h: xxh3.New()}, nil
}

func (r *Region) forget(name string) {
	r.mu.Lock()
	delete(r.names, name)
	delete(r.writing, name)
	r.mu.Unlock()
}

// Objects lists the objects completed since the region was opened.
func (r *Region) Objects() []ObjectInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ObjectInfo(nil), r.done...)
}

// Seal commits the checkpoint: it fills in the manifest's identity fields
// and object list, makes every object durable and writes the manifest. It
// fails with ErrBusy while writers are open; on any error nothing is
// committed and the objects stay for Discard or another Seal.
func (r *Region) Seal(ctx context.Context, m *Manifest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.writable("seal"); err != nil {
		return err
	}
	r.mu.Lock()
	if n := len(r.writing); n > 0 {
		r.mu.Unlock()
		return fmt.Errorf("%w: %d open", ErrBusy, n)
	}
	m.Objects = append([]ObjectInfo(nil), r.done...)
	r.mu.Unlock()
	fillIdentity(m, r.st.id())
	if err := m.validate(); err != nil {
		return err
	}
	b, err := encodeManifest(m)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := r.st.commit(b); err != nil {
		return fmt.Errorf("seal %s: %w", r.path, err)
	}
	r.log.Debug("sealed", "region", r.path, "objects", len(m.Objects), "bytes", m.TotalBytes(), "took", time.Since(start))
	return nil
}

func fillIdentity(m *Manifest, id string) {
	m.Version = FormatVersion
	m.RegionID = id
	if m.Kernel == "" {
		m.Kernel = KernelRelease()
	}
	if m.BootID == "" {
		m.BootID = BootID()
	}
	if m.Hostname == "" {
		m.Hostname, _ = os.Hostname()
	}
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
}

// discardable refuses a discard of a read-only or sealed region.
func (r *Region) discardable() error {
	if err := r.writable("discard"); err != nil {
		return err
	}
	if sealed, err := r.Sealed(); err != nil {
		return err
	} else if sealed {
		return fmt.Errorf("discard: %w", ErrSealed)
	}
	return nil
}

// Discard drops the objects written since Open that were not committed —
// the rollback of a checkpoint in progress. It refuses a sealed region.
func (r *Region) Discard() error {
	if err := r.discardable(); err != nil {
		return err
	}
	r.mu.Lock()
	if len(r.writing) > 0 {
		r.mu.Unlock()
		return fmt.Errorf("discard: %w", ErrBusy)
	}
	objs := r.done
	r.done, r.names = nil, map[string]bool{}
	r.mu.Unlock()
	return r.st.discard(objs)
}

// DiscardAll drops every object of an unsealed region, those that earlier
// processes wrote too: a suspend killed before its commit leaves its
// objects behind, which Discard (this process's objects only) does not
// see. It is recover's cleanup, once every workload runs again. It
// refuses a sealed region.
func (r *Region) DiscardAll() error {
	if err := r.discardable(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.writing) > 0 {
		return fmt.Errorf("discard: %w", ErrBusy)
	}
	// With no manifest, a release drops exactly the objects.
	if err := r.st.release(nil); err != nil {
		return err
	}
	r.done, r.names = nil, map[string]bool{}
	return nil
}

// Release drops the committed checkpoint: call it only after every
// workload was restored. The manifest goes first, so an interrupted
// release leaves no half-valid checkpoint.
func (r *Region) Release() error {
	if err := r.writable("release"); err != nil {
		return err
	}
	m, err := r.Manifest()
	if errors.Is(err, ErrNotSealed) {
		return nil
	}
	var objs []ObjectInfo
	if err == nil {
		objs = m.Objects
	}
	// A corrupt manifest may still be released: it is an explicit call.
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.writing) > 0 {
		return fmt.Errorf("release: %w", ErrBusy)
	}
	if err := r.st.release(objs); err != nil {
		return err
	}
	r.done, r.names = nil, map[string]bool{}
	return nil
}

// Verify checks the committed checkpoint: manifest framing, version and
// checksum, then every object's location, size and xxh3 checksum, reading
// objects in parallel. It returns the manifest, or an error naming every
// failing object (errors.Join of *ObjectError). It never deletes anything.
func (r *Region) Verify(ctx context.Context) (*Manifest, error) {
	m, err := r.Manifest()
	if err != nil {
		return nil, err
	}
	objs := append([]ObjectInfo(nil), m.Objects...)
	sort.Slice(objs, func(i, j int) bool { return objs[i].Size > objs[j].Size })
	errs := make([]error, len(objs))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(len(objs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs[i] = r.verifyObject(ctx, objs[i])
			}
		}()
	}
	for i := range objs {
		work <- i
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return m, err
	}
	return m, nil
}

func (r *Region) verifyObject(ctx context.Context, o ObjectInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rc, err := r.st.openObject(o)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, &verifyingReader{ctx: ctx, r: rc, o: o})
	return err
}

// OpenObject returns a reader of a committed object that checks the
// object's size and xxh3 checksum as it goes: the read that reaches the end
// returns an *ObjectError instead of io.EOF when they do not match.
func (r *Region) OpenObject(name string) (io.ReadCloser, error) {
	m, err := r.Manifest()
	if err != nil {
		return nil, err
	}
	o, ok := m.Object(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoObject, name)
	}
	rc, err := r.st.openObject(o)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{&verifyingReader{ctx: context.Background(), r: rc, o: o}, rc}, nil
}

type verifyingReader struct {
	ctx context.Context
	r   io.Reader
	o   ObjectInfo
	n   int64
	h   *xxh3.Hasher
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if err := v.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := v.r.Read(p)
	if v.h == nil {
		v.h = xxh3.New()
	}
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.o.Size {
		return n, &ObjectError{v.o.Name, fmt.Sprintf("longer than the %d bytes the manifest records", v.o.Size), ErrCorrupt}
	}
	if err == io.EOF {
		if v.n != v.o.Size {
			return n, &ObjectError{v.o.Name, fmt.Sprintf("truncated: %d of %d bytes", v.n, v.o.Size), ErrCorrupt}
		}
		if v.h == nil {
			v.h = xxh3.New()
		}
		if sum := v.h.Sum64(); sum != v.o.XXH3 {
			return n, &ObjectError{v.o.Name, fmt.Sprintf("checksum mismatch: xxh3 %016x, manifest records %016x", sum, v.o.XXH3), ErrCorrupt}
		}
	}
	return n, err
}

// ObjectWriter streams one object into the region, computing its xxh3-64
// checksum on the way. It is not safe for concurrent use; different writers are.
type ObjectWriter struct {
	r    *Region
	name string
	s    sink
	n    int64
	h    *xxh3.Hasher
	err  error
	done bool
}

// writePiece bounds how much is checksummed before it is written, so the
// bytes are still in cache when the copy reads them.
const writePiece = 256 << 10

// Write appends p to the object. After an error the writer is unusable
// and must be aborted.
func (w *ObjectWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.done {
		return 0, fmt.Errorf("write %q: writer closed", w.name)
	}
	written := 0
	for len(p) > 0 {
		c := p[:min(len(p), writePiece)]
		w.h.Write(c)
		n, err := w.s.Write(c)
		written += n
		w.n += int64(n)
		w.r.streamed.Add(int64(n))
		if err != nil {
			w.err = fmt.Errorf("write %q at %d: %w", w.name, w.n, err)
			return written, w.err
		}
		p = p[len(c):]
	}
	return written, nil
}

// ReadFrom lets io.Copy hand the writer large buffers.
func (w *ObjectWriter) ReadFrom(rd io.Reader) (int64, error) {
	buf := make([]byte, 1*MiB)
	var total int64
	for {
		n, err := rd.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Size is the number of bytes written so far.
func (w *ObjectWriter) Size() int64 { return w.n }

// Close completes the object; it becomes part of the next Seal. On error
// the object is aborted.
func (w *ObjectWriter) Close() error {
	if w.done {
		return nil
	}
	if w.err != nil {
		w.Abort()
		return w.err
	}
	ext, err := w.s.finish()
	if err != nil {
		w.Abort()
		return fmt.Errorf("close %q: %w", w.name, err)
	}
	w.done = true
	r := w.r
	r.mu.Lock()
	delete(r.writing, w.name)
	r.done = append(r.done, ObjectInfo{Name: w.name, Size: w.n, XXH3: w.h.Sum64(), Extents: ext})
	r.mu.Unlock()
	return nil
}

// Abort drops the object and its space. It is safe after Close (no-op).
func (w *ObjectWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.s.abort()
	w.r.forget(w.name)
}

// validName accepts relative, clean, slash-separated names.
func validName(name string) error {
	switch {
	case name == "" || len(name) > 1024:
		return fmt.Errorf("invalid object name %q: empty or too long", name)
	case strings.ContainsAny(name, "\x00\\"):
		return fmt.Errorf("invalid object name %q: NUL or backslash", name)
	case path.IsAbs(name) || path.Clean(name) != name || name == "." ||
		name == ".." || strings.HasPrefix(name, "../"):
		return fmt.Errorf("invalid object name %q: must be a clean relative path", name)
	case name == manifestFile || strings.HasPrefix(name, ".") || strings.Contains(name, "/."):
		return fmt.Errorf("invalid object name %q: reserved", name)
	}
	return nil
}

// KernelRelease is uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// BootID identifies the running boot; it changes across kexec.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
