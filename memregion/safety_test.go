package memregion

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
}

// sealedDirRegion makes a dir region with object "sub/a" committed.
func sealedDirRegion(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r")
	if err := Format(path, FormatOptions{Kind: KindDir}); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	writeObject(t, r, "sub/a", []byte("inside"), 6)
	if err := r.Seal(context.Background(), &Manifest{}); err != nil {
		t.Fatal(err)
	}
	return path
}

// The component-by-component fallback (kernels without openat2) refuses
// the same symlinks.
func TestOpenWalkFallbackRefusesSymlinks(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		noOpenat2.Store(fallback)
		path := sealedDirRegion(t)
		outside := t.TempDir()
		os.WriteFile(filepath.Join(outside, "a"), []byte("inside"), 0o600)
		os.RemoveAll(filepath.Join(path, objectsDir, "sub"))
		os.Symlink(outside, filepath.Join(path, objectsDir, "sub"))
		r := mustOpen(t, path)
		if _, err := r.Verify(context.Background()); !errors.Is(err, ErrUnsafe) {
			t.Errorf("fallback %v: Verify through a symlinked directory = %v; want ErrUnsafe", fallback, err)
		}
		if _, err := openWalk(r.st.(*dirStore).root, "objects/../"+markerFile, unix.O_RDONLY, 0); !errors.Is(err, unix.EXDEV) {
			t.Errorf("openWalk accepted \"..\": %v", err)
		}
	}
	noOpenat2.Store(false)
}

// Release removes a symlinked objects directory itself, never what it
// points at.
func TestReleaseDoesNotFollowSymlinks(t *testing.T) {
	path := sealedDirRegion(t)
	outside := t.TempDir()
	keep := filepath.Join(outside, "keep")
	os.WriteFile(keep, []byte("keep"), 0o600)
	sub := filepath.Join(path, objectsDir, "sub")
	os.RemoveAll(sub)
	os.Symlink(outside, sub)
	r := mustOpen(t, path)
	if err := r.Release(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "keep" {
		t.Fatalf("release reached outside the region: %q, %v", b, err)
	}
	if _, err := os.Lstat(sub); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("symlink inside the region survived release: %v", err)
	}
}

// Creating an object through a symlinked subdirectory, or over a
// symlink left where the object goes, writes nothing outside.
func TestCreateDoesNotWriteThroughSymlinks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	Format(path, FormatOptions{Kind: KindDir})
	outside := t.TempDir()
	decoy := filepath.Join(outside, "decoy")
	os.WriteFile(decoy, []byte("decoy"), 0o600)
	os.Symlink(outside, filepath.Join(path, objectsDir, "sub"))
	os.Symlink(decoy, filepath.Join(path, objectsDir, "left"))
	r := mustOpen(t, path)
	if _, err := r.Create("sub/x", 0); !errors.Is(err, ErrUnsafe) {
		t.Errorf("Create under a symlinked directory = %v; want ErrUnsafe", err)
	}
	if _, err := r.ObjectDir("sub/y"); !errors.Is(err, ErrUnsafe) {
		t.Errorf("ObjectDir under a symlinked directory = %v; want ErrUnsafe", err)
	}
	writeObject(t, r, "left", []byte("new"), 3)
	if b, _ := os.ReadFile(decoy); string(b) != "decoy" {
		t.Fatalf("decoy rewritten: %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("files created outside the region: %v", ents)
	}
}

// snapshotTree records every entry's mode and content under root.
func snapshotTree(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		m[p] = v
		return nil
	})
	return m
}

func sameTree(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s: %s changed: %q -> %q", what, p, v, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s: %s appeared", what, p)
		}
	}
}

// Format without force refuses every kind of ckpt data, says what it
// found, and leaves it byte for byte and mode for mode as it was.
func TestFormatRefusesAnythingThatMayHoldACheckpoint(t *testing.T) {
	raw := func(edit func(b []byte)) func(t *testing.T, p string) {
		return func(t *testing.T, p string) {
			if err := Format(p, FormatOptions{Kind: KindRaw, Size: 16 * MiB}); err != nil {
				t.Fatal(err)
			}
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			defer f.Close()
			b := make([]byte, superblockUsed)
			f.ReadAt(b, 0)
			edit(b)
			f.WriteAt(b, 0)
			os.Chmod(p, 0o640)
		}
	}
	reseal := func(b []byte) { putLE32(b[68:], crc32c(b[:68])) }
	dir := func(edit func(p string)) func(t *testing.T, p string) {
		return func(t *testing.T, p string) {
			if err := Format(p, FormatOptions{Kind: KindDir}); err != nil {
				t.Fatal(err)
			}
			edit(p)
			os.Chmod(p, 0o755)
		}
	}
	cases := map[string]struct {
		make func(t *testing.T, p string)
		want error
		says string
	}{
		"raw newer version": {raw(func(b []byte) { putLE32(b[8:], 2); reseal(b) }), ErrMayHoldCheckpoint, "format 2"},
		"raw unknown flags": {raw(func(b []byte) { putLE32(b[12:], 1); reseal(b) }), ErrMayHoldCheckpoint, "flags"},
		"raw flipped bit":   {raw(func(b []byte) { b[20] ^= 4 }), ErrMayHoldCheckpoint, "checksum"},
		"raw flipped magic": {raw(func(b []byte) { b[1] ^= 1 }), ErrMayHoldCheckpoint, "damaged magic"},
		"raw sealed": {raw(func(b []byte) {
			binary64(b[48:], uint64(rawDataStart))
			binary64(b[56:], 100)
			reseal(b)
		}), ErrSealed, "committed checkpoint"},
		"dir newer marker":      {dir(func(p string) { os.WriteFile(filepath.Join(p, markerFile), []byte(`{"format":2}`), 0o600) }), ErrMayHoldCheckpoint, "format 2"},
		"dir unreadable marker": {dir(func(p string) { os.WriteFile(filepath.Join(p, markerFile), []byte(`{"form`), 0o600) }), ErrMayHoldCheckpoint, "marker"},
		"dir manifest only": {dir(func(p string) {
			os.Remove(filepath.Join(p, markerFile))
			os.WriteFile(filepath.Join(p, manifestFile), []byte("CKPTMAN\x00"), 0o600)
		}), ErrMayHoldCheckpoint, "MANIFEST but no"},
		"dir flipped manifest": {dir(func(p string) { os.WriteFile(filepath.Join(p, manifestFile), []byte("CKPTMAN\x01garbage"), 0o600) }), ErrMayHoldCheckpoint, "damaged manifest"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "r")
			c.make(t, p)
			before := snapshotTree(t, p)
			err := Format(p, FormatOptions{})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("Format = %v; want %v saying %q", err, c.want, c.says)
			}
			sameTree(t, "refused format", before, snapshotTree(t, p))
		})
	}
}

func binary64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// A format that fails leaves a path it did not create as it was.
func TestFailedFormatChangesNothing(t *testing.T) {
	t.Run("raw, no room", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "empty")
		os.WriteFile(p, nil, 0o644)
		if err := Format(p, FormatOptions{Kind: KindRaw, Size: 1 << 60}); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Format = %v; want ErrNoSpace", err)
		}
		st, err := os.Stat(p)
		if err != nil || st.Size() != 0 || st.Mode().Perm() != 0o644 {
			t.Fatalf("after a failed format: %v, %v", st, err)
		}
	})
	t.Run("raw, too small", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "small")
		os.WriteFile(p, bytes.Repeat([]byte("x"), 1<<20), 0o644)
		before := snapshotTree(t, p)
		if err := Format(p, FormatOptions{Kind: KindRaw}); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Format = %v; want ErrNoSpace", err)
		}
		sameTree(t, "failed raw format", before, snapshotTree(t, p))
	})
	t.Run("dir, marker is a directory", func(t *testing.T) {
		p := t.TempDir()
		os.Chmod(p, 0o755)
		os.Mkdir(filepath.Join(p, markerFile+".d"), 0o755)
		os.Mkdir(filepath.Join(p, markerFile), 0o755)
		before := snapshotTree(t, p)
		if err := Format(p, FormatOptions{Kind: KindDir, Force: true}); !errors.Is(err, ErrUnsafe) {
			t.Fatalf("Format = %v; want ErrUnsafe", err)
		}
		sameTree(t, "failed dir format", before, snapshotTree(t, p))
	})
	t.Run("dir created", func(t *testing.T) {
		parent := t.TempDir()
		p := filepath.Join(parent, "new")
		os.WriteFile(filepath.Join(parent, "blocker"), nil, 0o600)
		if err := Format(filepath.Join(parent, "blocker", "r"), FormatOptions{Kind: KindDir}); err == nil {
			t.Fatal("format under a file succeeded")
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	})
}

// Format tightens modes and refuses another user's path.
func TestFormatPermissions(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Mkdir(filepath.Join(dir, objectsDir), 0o777)
	if err := Format(dir, FormatOptions{Kind: KindDir}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, objectsDir): 0o700, filepath.Join(dir, markerFile): 0o600} {
		if st, _ := os.Stat(p); st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	f := filepath.Join(t.TempDir(), "raw")
	os.WriteFile(f, make([]byte, 16*MiB), 0o666)
	if err := Format(f, FormatOptions{Kind: KindRaw}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(f); st.Mode().Perm() != 0o600 {
		t.Errorf("raw file: mode %v, want 0600", st.Mode().Perm())
	}
	newFile := filepath.Join(t.TempDir(), "new")
	Format(newFile, FormatOptions{Kind: KindRaw, Size: 16 * MiB})
	if st, _ := os.Stat(newFile); st.Mode().Perm() != 0o600 {
		t.Errorf("new raw file: mode %v, want 0600", st.Mode().Perm())
	}
	other := t.TempDir()
	os.Chown(other, 65534, 65534)
	before := snapshotTree(t, other)
	if err := Format(other, FormatOptions{Kind: KindDir}); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("Format of another user's directory = %v; want ErrUnsafe", err)
	}
	sameTree(t, "refused format", before, snapshotTree(t, other))
}

// readOnlyBind mounts dir read-only at a new place (root bypasses file
// modes, so a 0400 file would not prove anything).
func readOnlyBind(t *testing.T, dir string) string {
	t.Helper()
	requireRoot(t)
	ro := t.TempDir()
	if err := unix.Mount(dir, ro, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	return ro
}

// Inspect and verify work on a write-protected region.
func TestReadOnlyRegion(t *testing.T) {
	kinds(t, 0, func(t *testing.T, path string) {
		if isFSLayout(path) {
			t.Skip("a device node, not a path a read-only mount can hold: TestFSReadOnlyOpen")
		}
		r := mustOpen(t, path)
		writeObject(t, r, "a", []byte("payload"), 7)
		if err := r.Seal(context.Background(), &Manifest{}); err != nil {
			t.Fatal(err)
		}
		r.Close()
		os.Chmod(path, 0o400)
		ro := filepath.Join(readOnlyBind(t, filepath.Dir(path)), filepath.Base(path))
		if _, err := Open(ro, Options{}); err == nil && r.Kind() == KindRaw {
			t.Fatal("read-write open of a read-only mount succeeded")
		}
		rr, err := Open(ro, Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("read-only open: %v", err)
		}
		defer rr.Close()
		if _, err := rr.Verify(context.Background()); err != nil {
			t.Fatalf("verify read-only: %v", err)
		}
		rc, _ := rr.OpenObject("a")
		if b, err := io.ReadAll(rc); err != nil || string(b) != "payload" {
			t.Fatalf("read %q, %v", b, err)
		}
		if err := rr.Release(); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("Release on a read-only region = %v; want ErrReadOnly", err)
		}
		if _, err := rr.Create("b", 0); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("Create on a read-only region = %v; want ErrReadOnly", err)
		}
	})
}

func TestBoundsWithoutOverflow(t *testing.T) {
	bad := []ObjectInfo{
		{Name: "wrap", Size: 1 << 62, Extents: []Extent{{Off: 1 << 62, Len: 1 << 62}}},
		{Name: "sum", Size: 0, Extents: []Extent{{Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}}},
		{Name: "end", Size: 100, Extents: []Extent{{Off: math.MaxInt64 - 10, Len: 100}}},
		{Name: "huge", Size: math.MaxInt64},
	}
	for _, o := range bad {
		m := &Manifest{Version: FormatVersion, Objects: []ObjectInfo{o}}
		if err := m.validate(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: validate = %v; want ErrCorrupt", o.Name, err)
		}
	}
	two := &Manifest{Version: FormatVersion, Objects: []ObjectInfo{{Name: "a", Size: maxRawSize}, {Name: "b", Size: maxRawSize}}}
	if err := two.validate(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("sizes summing past the limit: %v", err)
	}
	s := &rawStore{size: 64 * MiB}
	if _, err := s.openObject(ObjectInfo{Name: "x", Size: 100, Extents: []Extent{{Off: 64*MiB - 10, Len: 100}}}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("extent past the device end: %v", err)
	}
	sb := superblock{Format: FormatVersion, Size: uint64(64 * MiB), ManifestOff: math.MaxUint64 - 10, ManifestLen: 100}
	if _, err := parseSuperblock(sb.encode()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("superblock manifest offset wrapping around: %v", err)
	}
	sb = superblock{Format: FormatVersion, Size: uint64(64 * MiB), Flags: 1 << 31}
	if _, err := parseSuperblock(sb.encode()); !errors.Is(err, ErrVersion) {
		t.Errorf("unknown superblock flag: %v", err)
	}
}

// A manifest above the cap is refused before it is read into memory.
func TestHugeManifestIsNotRead(t *testing.T) {
	path := sealedDirRegion(t)
	if err := os.Truncate(filepath.Join(path, manifestFile), 4<<30); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	if _, err := r.Manifest(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("Manifest = %v; want ErrCorrupt naming the limit", err)
	}
}
