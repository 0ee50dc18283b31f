package hypervisors

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// StoreDir streams every regular file of dir into dst as prefix+<name>,
// largest first, and returns the object names and the bytes stored: for
// a backend whose tool writes a directory of files (CRIU's images) where
// the region takes no files in place.
func StoreDir(ctx context.Context, dir, prefix string, dst ObjectSink) ([]string, int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	type file struct {
		name string
		size int64
	}
	var files []file
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			files = append(files, file{e.Name(), info.Size()})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].size > files[j].size })
	var names []string
	var total int64
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		n, err := StoreFile(filepath.Join(dir, f.name), prefix+f.name, f.size, dst)
		if err != nil {
			return nil, 0, err
		}
		names = append(names, prefix+f.name)
		total += n
	}
	return names, total, nil
}

// FilesDir is where a tool that writes files (CRIU's images) puts the
// objects named prefix*: straight into the region where dst keeps objects
// as files (direct), else staging, to be stored with StoreDir.
func FilesDir(dst ObjectSink, prefix, staging string) (dir string, direct bool) {
	if ds, ok := dst.(DirectSink); ok {
		if d, err := ds.Dir(strings.TrimSuffix(prefix, "/")); err == nil {
			return d, true
		}
	}
	return staging, false
}

// AdoptDir turns the regular files written in dir, a FilesDir that was
// direct, into the objects prefix+<name>, and returns their names and
// bytes.
func AdoptDir(ctx context.Context, dir, prefix string, dst DirectSink) ([]string, int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	var names []string
	var total int64
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		if err := dst.Adopt(prefix + e.Name()); err != nil {
			return nil, 0, err
		}
		names = append(names, prefix+e.Name())
		total += info.Size()
	}
	return names, total, nil
}

// FilesFrom is the directory holding the objects src's names list under
// prefix, as files: in place where src is a DirectSource, else loaded
// into staging.
func FilesFrom(src ObjectSource, names []string, prefix, staging string) (string, error) {
	if ds, ok := src.(DirectSource); ok {
		if d, err := ds.Dir(strings.TrimSuffix(prefix, "/")); err == nil {
			return d, nil
		}
	}
	return staging, LoadDir(src, names, prefix, staging)
}

// StoreFile copies the file src into dst as the object name.
func StoreFile(src, name string, size int64, dst ObjectSink) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w, err := dst.Create(name, size)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(w, f)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// LoadDir copies the objects names out of src into dir, each as its name
// without prefix: the inverse of StoreDir.
func LoadDir(src ObjectSource, names []string, prefix, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, name := range names {
		if err := LoadFile(src, name, filepath.Join(dir, strings.TrimPrefix(name, prefix))); err != nil {
			return err
		}
	}
	return nil
}

// LoadFile copies the object name out of src into the file path; the
// source reports corruption at EOF, which fails the copy.
func LoadFile(src ObjectSource, name, path string) error {
	rc, err := src.Open(name)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	return f.Close()
}
