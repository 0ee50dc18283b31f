package memregion

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// ErrNoDirectAccess means the region keeps objects somewhere a program
// cannot write as files (the raw layout).
var ErrNoDirectAccess = errors.New("region: objects are not files")

// DirectFiles says whether programs can write objects in place as files
// (ObjectDir works), without touching the region: what a plan asks.
func (r *Region) DirectFiles() bool {
	_, ok := r.files()
	return ok
}

// files is the dir store behind a region whose objects are files: a dir
// region, or the filesystem of an fs region.
func (r *Region) files() (*dirStore, bool) {
	switch s := r.st.(type) {
	case *dirStore:
		return s, true
	case *fsStore:
		return s.dirStore, true
	}
	return nil, false
}

// ObjectDir returns a directory inside a dir region where a program (CRIU)
// may write files that Adopt then turns into objects named prefix/<file>,
// without a copy. The raw layout returns ErrNoDirectAccess. The region
// must not hold a committed checkpoint. Every directory on the way is
// made or checked without following a symlink; the program then writes
// by path, so the region must be writable by root alone (Format makes it
// 0700). Files left unadopted are the caller's to remove.
func (r *Region) ObjectDir(prefix string) (string, error) {
	d, ok := r.files()
	if !ok {
		return "", ErrNoDirectAccess
	}
	if err := r.writable("object dir"); err != nil {
		return "", err
	}
	if err := validName(prefix); err != nil {
		return "", err
	}
	if sealed, err := r.Sealed(); err != nil {
		return "", err
	} else if sealed {
		return "", fmt.Errorf("%w: %s", ErrSealed, r.path)
	}
	if err := mkdirAll(d.root, objRel(prefix)); err != nil {
		return "", err
	}
	return d.objPath(prefix), nil
}

// Adopt makes the file already at ObjectDir's place for name an object,
// reading it once for its checksum. It refuses a symlink, or anything but
// a regular file (*UnsafeError), without blocking.
func (r *Region) Adopt(name string) error {
	d, ok := r.files()
	if !ok {
		return ErrNoDirectAccess
	}
	if err := r.writable("adopt"); err != nil {
		return err
	}
	if err := validName(name); err != nil {
		return err
	}
	r.mu.Lock()
	if r.names[name] {
		r.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrObjectExists, name)
	}
	r.names[name] = true
	r.mu.Unlock()
	info, err := hashFile(d.root, objRel(name))
	if err != nil {
		r.forget(name)
		return fmt.Errorf("adopt %q: %w", name, err)
	}
	info.Name = name
	r.mu.Lock()
	r.done = append(r.done, info)
	r.mu.Unlock()
	return nil
}

func hashFile(root int, rel string) (ObjectInfo, error) {
	f, err := openRegular(root, rel, unix.O_RDONLY)
	if err != nil {
		return ObjectInfo{}, err
	}
	defer f.Close()
	h := xxh3.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ObjectInfo{}, err
	}
	if err := f.Sync(); err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Size: n, XXH3: h.Sum64()}, nil
}

// CommittedDir returns the directory holding the committed objects named
// prefix/… of a dir region, for programs that read them in place (CRIU
// restore). Callers must Verify the region first: reading files in place
// bypasses the per-read checksum of OpenObject. It refuses (*UnsafeError)
// a directory that is a symlink or holds anything but regular files and
// directories, since the program will follow what it finds there.
func (r *Region) CommittedDir(prefix string) (string, error) {
	d, ok := r.files()
	if !ok {
		return "", ErrNoDirectAccess
	}
	if err := validName(prefix); err != nil {
		return "", err
	}
	if _, err := r.Manifest(); err != nil {
		return "", err
	}
	fd, err := openDirBeneath(d.root, objRel(prefix))
	if err != nil {
		return "", relabel(err, objRel(prefix))
	}
	defer unix.Close(fd)
	if err := checkTree(fd, objRel(prefix), 0); err != nil {
		return "", err
	}
	return filepath.Clean(d.objPath(prefix)), nil
}
