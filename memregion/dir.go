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

type dirStore struct {
	dir    string
	marker dirMarker
}

func formatDir(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, objectsDir), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(dirMarker{Format: FormatVersion, ID: newID()})
	return writeFileSync(filepath.Join(dir, markerFile), b)
}

func openDir(dir string) (*dirStore, error) {
	b, err := os.ReadFile(filepath.Join(dir, markerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no %s", ErrNotFormatted, dir, markerFile)
	}
	if err != nil {
		return nil, err
	}
	var m dirMarker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, markerFile, err)
	}
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("%w: %s has format %d, this ckpt reads %d", ErrVersion, dir, m.Format, FormatVersion)
	}
	return &dirStore{dir: dir, marker: m}, nil
}

func (d *dirStore) kind() string { return "dir" }
func (d *dirStore) id() string   { return d.marker.ID }
func (d *dirStore) close() error { return nil }

func (d *dirStore) objPath(name string) string {
	return filepath.Join(d.dir, objectsDir, filepath.FromSlash(name))
}

func (d *dirStore) newObject(name string, _ int64) (sink, error) {
	p := d.objPath(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Left over from a run that crashed before sealing: not committed.
		if err = os.Remove(p); err == nil {
			f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err != nil {
		return nil, err
	}
	return &dirSink{f: f}, nil
}

type dirSink struct{ f *os.File }

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
	os.Remove(s.f.Name())
}

func (d *dirStore) openObject(o ObjectInfo) (io.ReadCloser, error) {
	f, err := os.Open(d.objPath(o.Name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &ObjectError{o.Name, "missing: " + d.objPath(o.Name) + " does not exist", ErrCorrupt}
	}
	return f, err
}

func (d *dirStore) readManifest() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, manifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotSealed
	}
	return b, err
}

func (d *dirStore) commit(manifest []byte) error {
	p := filepath.Join(d.dir, manifestFile)
	tmp := p + ".tmp"
	if err := writeFileSync(tmp, manifest); err != nil {
		os.Remove(tmp)
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("%w: writing manifest: %v", ErrNoSpace, err)
		}
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	return syncDir(d.dir)
}

func (d *dirStore) discard(objs []ObjectInfo) error {
	var errs []error
	for _, o := range objs {
		if err := os.Remove(d.objPath(o.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *dirStore) release(_ []ObjectInfo) error {
	if err := os.Remove(filepath.Join(d.dir, manifestFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := syncDir(d.dir); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(d.dir, objectsDir)); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(d.dir, objectsDir), 0o700)
}

// dirHeadroom is kept free for the manifest and filesystem metadata.
const dirHeadroom = 16 * MiB

func (d *dirStore) space() (int64, int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.dir, &st); err != nil {
		return 0, 0, err
	}
	total := int64(st.Blocks) * st.Bsize
	free := int64(st.Bavail)*st.Bsize - dirHeadroom
	return total, max(free, 0), nil
}

func writeFileSync(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
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

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
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
