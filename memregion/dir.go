package memregion

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Directory layout:
//
//	<dir>/ckpt-region.json   marker: format version and region id
//	<dir>/objects/<name>     one file per object
//	<dir>/MANIFEST           framed manifest, written last (rename)
const (
	markerFile   = "ckpt-region.json"
	manifestFile = "MANIFEST"
	objectsDir   = "objects"
)

type dirMarker struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
}

// dirStore keeps every lookup relative to root, a descriptor of the
// region's directory (see beneath.go): nothing under the region is
// followed out of it.
type dirStore struct {
	dir    string
	root   int // O_RDONLY|O_DIRECTORY descriptor of dir
	marker dirMarker
}

// maxMarker bounds the marker file (it holds a few dozen bytes).
const maxMarker = 64 << 10

func openRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

func openDir(dir string) (*dirStore, error) {
	root, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	m, err := readMarker(root, dir)
	if err != nil {
		unix.Close(root)
		return nil, err
	}
	return &dirStore{dir: dir, root: root, marker: m}, nil
}

func readMarker(root int, dir string) (dirMarker, error) {
	var m dirMarker
	b, err := readCapped(root, markerFile, maxMarker)
	if errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("%w: %s has no %s", ErrNotFormatted, dir, markerFile)
	}
	if err != nil {
		return m, fmt.Errorf("%s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %s: %v", ErrCorrupt, markerFile, err)
	}
	if m.Format != FormatVersion {
		return m, fmt.Errorf("%w: %s has format %d, this ckpt reads %d", ErrVersion, dir, m.Format, FormatVersion)
	}
	return m, nil
}

func (d *dirStore) kind() string { return "dir" }
func (d *dirStore) id() string   { return d.marker.ID }
func (d *dirStore) close() error { return unix.Close(d.root) }

// objRel is an object's path relative to the region's root.
func objRel(name string) string { return objectsDir + "/" + name }

// objPath is an object's path for programs that take paths (CRIU).
func (d *dirStore) objPath(name string) string {
	return filepath.Join(d.dir, objectsDir, filepath.FromSlash(name))
}

func (d *dirStore) newObject(name string, _ int64) (sink, error) {
	rel := objRel(name)
	parent, _ := splitParent(rel)
	if err := mkdirAll(d.root, parent); err != nil {
		return nil, err
	}
	f, err := createExcl(d.root, rel)
	if errors.Is(err, fs.ErrExist) {
		// Left over from a run that crashed before sealing: not committed.
		// A symlink there is removed itself, not followed.
		if err = unlinkBeneath(d.root, rel); err == nil {
			f, err = createExcl(d.root, rel)
		}
	}
	if err != nil {
		return nil, err
	}
	return &dirSink{f: f, d: d, rel: rel}, nil
}

type dirSink struct {
	f   *os.File
	d   *dirStore
	rel string
}

func (s *dirSink) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("%w: %v", ErrNoSpace, err)
	}
	return n, err
}

func (s *dirSink) finish() ([]Extent, error) {
	if err := s.f.Sync(); err != nil {
		s.f.Close()
		return nil, err
	}
	return nil, s.f.Close()
}

func (s *dirSink) abort() {
	s.f.Close()
	unlinkBeneath(s.d.root, s.rel)
}

func (d *dirStore) openObject(o ObjectInfo) (io.ReadCloser, error) {
	f, err := openRegular(d.root, objRel(o.Name), unix.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &ObjectError{o.Name, "missing: " + d.objPath(o.Name) + " does not exist", ErrCorrupt}
	}
	var ue *UnsafeError
	if errors.As(err, &ue) {
		return nil, &ObjectError{o.Name, "refused: " + ue.Error(), err}
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (d *dirStore) readManifest() ([]byte, error) {
	b, err := readCapped(d.root, manifestFile, manifestHeaderLen+maxManifest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotSealed
	}
	return b, err
}

// checkManifest accepts any valid manifest: a dir region's objects are
// files, found by name beneath the root.
func (d *dirStore) checkManifest(*Manifest) error { return nil }

func (d *dirStore) commit(manifest []byte) error {
	tmp := manifestFile + ".tmp"
	if err := removeTree(d.root, tmp); err != nil {
		return err
	}
	if err := writeNew(d.root, tmp, manifest); err != nil {
		unlinkBeneath(d.root, tmp)
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("%w: writing manifest: %v", ErrNoSpace, err)
		}
		return err
	}
	if err := unix.Renameat(d.root, tmp, d.root, manifestFile); err != nil {
		unlinkBeneath(d.root, tmp)
		return &os.PathError{Op: "rename", Path: filepath.Join(d.dir, manifestFile), Err: err}
	}
	return syncFd(d.root)
}

func (d *dirStore) discard(objs []ObjectInfo) error {
	var errs []error
	for _, o := range objs {
		if err := unlinkBeneath(d.root, objRel(o.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *dirStore) release(_ []ObjectInfo) error {
	if err := removeTree(d.root, manifestFile); err != nil {
		return err
	}
	if err := syncFd(d.root); err != nil {
		return err
	}
	if err := removeTree(d.root, objectsDir); err != nil {
		return err
	}
	if err := unix.Mkdirat(d.root, objectsDir, 0o700); err != nil {
		return &os.PathError{Op: "mkdir", Path: filepath.Join(d.dir, objectsDir), Err: err}
	}
	return nil
}

// dirHeadroom is kept free for the manifest and filesystem metadata.
const dirHeadroom = 16 * MiB

func (d *dirStore) space() (int64, int64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(d.root, &st); err != nil {
		return 0, 0, err
	}
	total := int64(st.Blocks) * st.Bsize
	free := int64(st.Bavail)*st.Bsize - dirHeadroom
	return total, max(free, 0), nil
}

// writeNew creates name beneath dirfd (it must not exist), writes b and
// makes it durable.
func writeNew(dirfd int, name string, b []byte) error {
	f, err := createExcl(dirfd, name)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncFd(fd int) error {
	if err := unix.Fsync(fd); err != nil && err != unix.EINVAL {
		return err
	}
	return nil
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux ≥ 3.17
	}
	return hex.EncodeToString(b[:])
}
