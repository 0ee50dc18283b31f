package memregiontest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"

	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sys/unix"
)

type class struct {
	class string
	kind  string
	want  error
	build func(k *Kit, path string) error
}

// objectsOnly are the classes whose metadata is intact.
var objectsOnly = map[string]bool{
	"object-symlink-file": true, "object-symlink-fifo": true, "subdir-symlink": true, "objects-symlink": true,
	"object-fifo": true, "object-socket": true, "object-device": true,
}

const (
	dirKind = memregion.KindDir
	rawKind = memregion.KindRaw
	rawSize = 16 * memregion.MiB
)

var (
	errUnsafe    = memregion.ErrUnsafe
	errCorrupt   = memregion.ErrCorrupt
	errVersion   = memregion.ErrVersion
	errNotSealed = memregion.ErrNotSealed
)

// Every class of hostile region. The objects of a sealed region are "a"
// and "sub/a", both holding DecoyContent.
var classes = []class{
	// Symlinks out of a dir region, to decoys that would verify.
	{"object-symlink-file", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(obj(p, "a"), k.decoy("file")) })},
	{"object-symlink-fifo", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(obj(p, "a"), k.decoy("fifo")) })},
	{"subdir-symlink", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(obj(p, "sub"), k.decoy("dir/sub")) })},
	{"objects-symlink", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(filepath.Join(p, "objects"), k.decoy("dir")) })},
	{"manifest-symlink", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error {
		copyTo := k.decoy("MANIFEST-" + filepath.Base(filepath.Dir(p)))
		if err := os.Rename(filepath.Join(p, "MANIFEST"), copyTo); err != nil {
			return err
		}
		return relink(filepath.Join(p, "MANIFEST"), copyTo)
	})},
	{"manifest-symlink-fifo", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(filepath.Join(p, "MANIFEST"), k.decoy("fifo")) })},
	{"manifest-tmp-symlink", dirKind, errNotSealed, emptyDir(func(k *Kit, p string) error { return relink(filepath.Join(p, "MANIFEST.tmp"), k.decoy("file")) })},
	{"marker-symlink", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(filepath.Join(p, "ckpt-region.json"), k.decoy("marker")) })},
	{"marker-symlink-fifo", dirKind, errUnsafe, sealedDir(func(k *Kit, p string) error { return relink(filepath.Join(p, "ckpt-region.json"), k.decoy("fifo")) })},
	// Special files inside a dir region.
	{"object-fifo", dirKind, errUnsafe, sealedDir(func(_ *Kit, p string) error { return replace(obj(p, "a"), mkfifo) })},
	{"object-socket", dirKind, errUnsafe, sealedDir(func(_ *Kit, p string) error { return replace(obj(p, "a"), mksock) })},
	{"object-device", dirKind, errUnsafe, sealedDir(func(_ *Kit, p string) error { return replace(obj(p, "a"), mknull) })},
	{"manifest-fifo", dirKind, errUnsafe, sealedDir(func(_ *Kit, p string) error { return replace(filepath.Join(p, "MANIFEST"), mkfifo) })},
	{"marker-fifo", dirKind, errUnsafe, sealedDir(func(_ *Kit, p string) error { return replace(filepath.Join(p, "ckpt-region.json"), mkfifo) })},
	// Sizes and bounds.
	{"manifest-huge", dirKind, errCorrupt, sealedDir(func(_ *Kit, p string) error { return sparse(filepath.Join(p, "MANIFEST"), 4<<30) })},
	{"marker-huge", dirKind, errCorrupt, sealedDir(func(_ *Kit, p string) error { return sparse(filepath.Join(p, "ckpt-region.json"), 4<<30) })},
	{"manifest-overflow", dirKind, errCorrupt, sealedDir(func(_ *Kit, p string) error { return editDirManifest(p, 1, overflowExtents) })},
	{"manifest-newer", dirKind, errVersion, sealedDir(func(_ *Kit, p string) error {
		return editDirManifest(p, 2, func(m *memregion.Manifest) { m.Version = 2 })
	})},
	{"marker-newer", dirKind, errVersion, sealedDir(func(_ *Kit, p string) error {
		return os.WriteFile(filepath.Join(p, "ckpt-region.json"), []byte(`{"format":2,"id":"x"}`), 0o600)
	})},
	{"manifest-flipped", dirKind, errCorrupt, sealedDir(func(_ *Kit, p string) error { return flip(filepath.Join(p, "MANIFEST"), 40) })},
	// Raw regions that are not a regular file or a block device.
	{"raw-fifo", rawKind, errUnsafe, func(_ *Kit, p string) error { return mkfifo(p) }},
	{"raw-socket", rawKind, errUnsafe, func(_ *Kit, p string) error { return mksock(p) }},
	{"raw-chardev", rawKind, errUnsafe, func(_ *Kit, p string) error { return mknull(p) }},
	{"raw-symlink-fifo", rawKind, errUnsafe, func(k *Kit, p string) error { return os.Symlink(k.decoy("fifo"), p) }},
	// Raw metadata with valid checksums and bad content.
	{"raw-manifest-huge", rawKind, errCorrupt, func(_ *Kit, p string) error {
		if err := sealedRaw(p); err != nil {
			return err
		}
		if err := os.Truncate(p, 5<<30); err != nil {
			return err
		}
		return editSuper(p, func(sb []byte) {
			le.PutUint64(sb[sbSize:], 5<<30)
			le.PutUint64(sb[sbManifestOff:], uint64(memregion.MiB))
			le.PutUint64(sb[sbManifestLen:], 4<<30)
		})
	}},
	{"raw-extents-overflow", rawKind, errCorrupt, sealedRawThen(func(p string) error { return editRawManifest(p, overflowExtents) })},
	{"raw-extent-beyond", rawKind, errCorrupt, sealedRawThen(func(p string) error {
		return editRawManifest(p, func(m *memregion.Manifest) {
			for i := range m.Objects {
				o := &m.Objects[i]
				o.Extents = []memregion.Extent{{Off: rawSize - 10, Len: o.Size}}
			}
		})
	})},
	{"raw-unknown-flags", rawKind, errVersion, sealedRawThen(func(p string) error {
		return editSuper(p, func(sb []byte) { le.PutUint32(sb[sbFlags:], 4) })
	})},
	{"raw-newer", rawKind, errVersion, sealedRawThen(func(p string) error {
		return editSuper(p, func(sb []byte) { le.PutUint32(sb[sbFormat:], memregion.FormatVersion+1) })
	})},
	{"raw-flipped", rawKind, errCorrupt, sealedRawThen(func(p string) error { return flip(p, sbGeneration) })},
	{"raw-flipped-magic", rawKind, memregion.ErrNotFormatted, sealedRawThen(func(p string) error { return flip(p, 2) })},
	{"raw-manifest-flipped", rawKind, errCorrupt, sealedRawThen(func(p string) error {
		sb, err := readSuper(p)
		if err != nil {
			return err
		}
		return flip(p, int64(le.Uint64(sb[sbManifestOff:]))+40)
	})},
}

var le = binary.LittleEndian

func obj(region, name string) string { return filepath.Join(region, "objects", name) }

// overflowExtents makes object sizes and extents whose sums overflow int64.
func overflowExtents(m *memregion.Manifest) {
	m.Objects = append(m.Objects,
		memregion.ObjectInfo{Name: "wrap", Size: 1 << 62, Extents: []memregion.Extent{{Off: 1 << 62, Len: 1 << 62}}},
		memregion.ObjectInfo{Name: "zero", Size: 0, Extents: []memregion.Extent{{Off: 1 << 62, Len: 1 << 62}, {Off: 1 << 62, Len: 1 << 62}, {Off: 1 << 62, Len: 1 << 62}, {Off: 1 << 62, Len: 1 << 62}}},
		memregion.ObjectInfo{Name: "big", Size: math.MaxInt64, Extents: []memregion.Extent{{Off: math.MaxInt64 - 10, Len: math.MaxInt64}}},
		memregion.ObjectInfo{Name: "big2", Size: math.MaxInt64},
	)
}

func sealedDir(then func(k *Kit, path string) error) func(*Kit, string) error {
	return func(k *Kit, path string) error {
		if err := makeRegion(path, dirKind, true); err != nil {
			return err
		}
		return then(k, path)
	}
}

func emptyDir(then func(k *Kit, path string) error) func(*Kit, string) error {
	return func(k *Kit, path string) error {
		if err := makeRegion(path, dirKind, false); err != nil {
			return err
		}
		return then(k, path)
	}
}

func sealedRaw(path string) error { return makeRegion(path, rawKind, true) }

func sealedRawThen(then func(path string) error) func(*Kit, string) error {
	return func(_ *Kit, path string) error {
		if err := sealedRaw(path); err != nil {
			return err
		}
		return then(path)
	}
}

// makeRegion formats a real region and, if sealed, commits "a" and "sub/a".
func makeRegion(path, kind string, sealed bool) error {
	if err := memregion.Format(path, memregion.FormatOptions{Kind: kind, Size: rawSize}); err != nil {
		return err
	}
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	if !sealed {
		return nil
	}
	for _, name := range []string{"a", "sub/a"} {
		w, err := r.Create(name, 0)
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte(DecoyContent)); err != nil {
			w.Abort()
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return r.Seal(context.Background(), &memregion.Manifest{Hostname: "hostile"})
}

// relink replaces path (file or directory) with a symlink to target.
func relink(path, target string) error {
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	return os.Symlink(target, path)
}

// replace replaces path with what mk makes there.
func replace(path string, mk func(string) error) error {
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	return mk(path)
}

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

// mknull makes a character device node (the null device's numbers).
func mknull(path string) error {
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		return fmt.Errorf("%w: mknod: %v", errSkip, err)
	}
	return nil
}

// mksock leaves a unix socket's file at path (bound in a short temporary
// directory, since socket paths are limited to 108 bytes, then renamed).
func mksock(path string) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), "s")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	wd, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer wd.Close()
	// Bind through /proc/self/fd so the address stays short.
	short := fmt.Sprintf("/proc/self/fd/%d/s", wd.Fd())
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: short}); err != nil {
		return fmt.Errorf("%w: bind: %v", errSkip, err)
	}
	return os.Rename(filepath.Join(dir, "s"), path)
}

// sparse replaces path with a sparse file of n bytes.
func sparse(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(n)
}

func flip(path string, at int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		return err
	}
	b[0] ^= 0x10
	_, err = f.WriteAt(b, at)
	return err
}

func editDirManifest(region string, version uint32, edit func(*memregion.Manifest)) error {
	p := filepath.Join(region, "MANIFEST")
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	body, err := editBody(b, edit)
	if err != nil {
		return err
	}
	return os.WriteFile(p, Frame(body, version), 0o600)
}

func editBody(framed []byte, edit func(*memregion.Manifest)) ([]byte, error) {
	var m memregion.Manifest
	if err := json.Unmarshal(framed[manifestHeaderLen:], &m); err != nil {
		return nil, err
	}
	edit(&m)
	return json.Marshal(&m)
}

func readSuper(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sb := make([]byte, 4096)
	_, err = f.ReadAt(sb, 0)
	return sb, err
}

func editSuper(path string, edit func(sb []byte)) error {
	sb, err := readSuper(path)
	if err != nil {
		return err
	}
	edit(sb)
	Reseal(sb)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(sb, 0)
	return err
}

// editRawManifest rewrites a raw region's manifest in place with valid
// checksums in the manifest and the superblock.
func editRawManifest(path string, edit func(*memregion.Manifest)) error {
	sb, err := readSuper(path)
	if err != nil {
		return err
	}
	off, n := int64(le.Uint64(sb[sbManifestOff:])), int64(le.Uint64(sb[sbManifestLen:]))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	body, err := editBody(b, edit)
	if err != nil {
		return err
	}
	framed := Frame(body, memregion.FormatVersion)
	if _, err := f.WriteAt(framed, off); err != nil {
		return err
	}
	return editSuper(path, func(sb []byte) {
		le.PutUint64(sb[sbManifestLen:], uint64(len(framed)))
		le.PutUint32(sb[sbCRCOf:], crc32.Checksum(framed, castagnoli))
	})
}
