package memregion

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// kinds runs a test against every region kind, each on a fresh region
// (the fs layout on a loop device, where the host lets root make one).
func kinds(t *testing.T, size int64, fn func(t *testing.T, path string)) {
	for _, kind := range []string{KindDir, KindRaw, KindFS} {
		t.Run(kind, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "region")
			if kind == KindDir && size > 0 {
				path = smallTmpfs(t, size)
			}
			if size == 0 {
				size = 256 * MiB
			}
			if kind == KindFS {
				path = loopDevice(t, max(size, 64*MiB))
			}
			if err := Format(path, FormatOptions{Kind: kind, Size: size}); err != nil {
				t.Fatal(err)
			}
			fn(t, path)
		})
	}
}

// smallTmpfs mounts a tmpfs of the given size, for capacity tests.
func smallTmpfs(t *testing.T, size int64) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("mounting a size-limited tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "region")
}

// loopDevice attaches a new file of size bytes to a loop device, for the
// fs layout; the test's end unmounts and detaches it.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, size); err != nil {
		t.Fatal(err)
	}
	return loopDeviceFile(t, file)
}

// loopDeviceFile attaches file to a loop device.
func loopDeviceFile(t *testing.T, file string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("a loop device needs root")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the fs layout's test needs %s (util-linux, e2fsprogs)", tool)
		}
	}
	out, err := exec.Command("losetup", "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device for the fs layout here: losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		unix.Unmount(fsMountPoint(dev), unix.MNT_DETACH)
		exec.Command("losetup", "-d", dev).Run()
	})
	return dev
}

func mustOpen(t *testing.T, path string) *Region {
	t.Helper()
	r, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	rng.Read(b)
	return b
}

func writeObject(t *testing.T, r *Region, name string, data []byte, chunk int) {
	t.Helper()
	if err := writeChunked(r, name, data, chunk); err != nil {
		t.Fatal(err)
	}
}

func writeChunked(r *Region, name string, data []byte, chunk int) error {
	w, err := r.Create(name, 0)
	if err != nil {
		return err
	}
	for p := data; len(p) > 0; {
		c := p[:min(chunk, len(p))]
		if _, err := w.Write(c); err != nil {
			w.Abort()
			return err
		}
		p = p[len(c):]
	}
	return w.Close()
}

func TestRoundTripConcurrentWriters(t *testing.T) {
	kinds(t, 0, func(t *testing.T, path string) {
		r := mustOpen(t, path)
		objs := map[string][]byte{}
		for i := range 6 {
			// Sizes around chunk boundaries, and an empty object.
			n := []int{0, 1, 4097, 3 << 20, 70 << 20, 5 << 20}[i]
			objs[fmt.Sprintf("w%d/pages-%d.img", i%2, i)] = randBytes(uint64(i), n)
		}
		var wg sync.WaitGroup
		for name, data := range objs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := writeChunked(r, name, data, 1<<20+13); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		rec := json.RawMessage(`{"bundle":"/x"}`)
		m := &Manifest{Workloads: []WorkloadRecord{{ID: "w0", Backend: "fake", Objects: []string{"w0/pages-0.img"}, Restore: rec}}}
		if err := r.Seal(context.Background(), m); err != nil {
			t.Fatal(err)
		}
		r.Close()

		r2 := mustOpen(t, path)
		got, err := r2.Verify(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Objects) != len(objs) || got.Kernel == "" || got.BootID == "" || got.RegionID != r2.ID() {
			t.Fatalf("manifest = %+v", got)
		}
		if string(got.Workloads[0].Restore) != string(rec) {
			t.Fatalf("restore record = %s", got.Workloads[0].Restore)
		}
		for name, data := range objs {
			rc, err := r2.OpenObject(name)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(b, data) {
				t.Fatalf("%s: %d bytes, err %v; want %d bytes", name, len(b), err, len(data))
			}
		}
		// A sealed region refuses new objects, Discard and Format.
		if _, err := r2.Create("late", 0); !errors.Is(err, ErrSealed) {
			t.Fatalf("Create on sealed region: %v", err)
		}
		if err := r2.Discard(); !errors.Is(err, ErrSealed) {
			t.Fatalf("Discard on sealed region: %v", err)
		}
		if err := Format(path, FormatOptions{}); !errors.Is(err, ErrSealed) {
			t.Fatalf("Format over sealed region: %v", err)
		}
		if err := r2.Release(); err != nil {
			t.Fatal(err)
		}
		if _, err := r2.Manifest(); !errors.Is(err, ErrNotSealed) {
			t.Fatalf("after release: %v", err)
		}
		// The same Region value is reusable after Release, names included.
		writeObject(t, r2, "w0/pages-0.img", []byte("x"), 1)
		if err := r2.Seal(context.Background(), &Manifest{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUnsealedRegionIsNeverRestored(t *testing.T) {
	kinds(t, 0, func(t *testing.T, path string) {
		r := mustOpen(t, path)
		writeObject(t, r, "a", []byte("hello"), 5)
		if _, err := r.Verify(context.Background()); !errors.Is(err, ErrNotSealed) {
			t.Fatalf("Verify before seal: %v", err)
		}
		// A writer still open blocks Seal.
		w, err := r.Create("b", 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Seal(context.Background(), &Manifest{}); !errors.Is(err, ErrBusy) {
			t.Fatalf("Seal with open writer: %v", err)
		}
		w.Abort()
		if err := r.Discard(); err != nil {
			t.Fatal(err)
		}
		if got := r.Objects(); len(got) != 0 {
			t.Fatalf("objects after discard: %v", got)
		}
		if _, err := r.Manifest(); !errors.Is(err, ErrNotSealed) {
			t.Fatalf("Manifest after discard: %v", err)
		}
	})
}

// objectLocation finds where an object's byte off lives, to corrupt it.
func corruptObjectByte(t *testing.T, r *Region, name string, off int64) {
	t.Helper()
	m, err := r.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	o, _ := m.Object(name)
	file, at := "", off
	if root, ok := filesRoot(r); ok {
		file = filepath.Join(root, objectsDir, name)
	} else {
		file, at = r.Path(), o.Extents[0].Off+off
	}
	flipByte(t, file, at)
}

// filesRoot is the directory holding a dir or fs region's files.
func filesRoot(r *Region) (string, bool) {
	d, ok := r.files()
	if !ok {
		return "", false
	}
	return d.dir, true
}

func flipByte(t *testing.T, file string, at int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRefusesAndKeepsEverything(t *testing.T) {
	kinds(t, 0, func(t *testing.T, path string) {
		r := mustOpen(t, path)
		writeObject(t, r, "good", randBytes(1, 100000), 4096)
		writeObject(t, r, "bad", randBytes(2, 100000), 4096)
		if err := r.Seal(context.Background(), &Manifest{}); err != nil {
			t.Fatal(err)
		}
		corruptObjectByte(t, r, "bad", 54321)

		_, err := r.Verify(context.Background())
		var oe *ObjectError
		if !errors.As(err, &oe) || oe.Object != "bad" || !errors.Is(err, ErrCorrupt) ||
			!strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("Verify = %v; want a checksum mismatch naming object \"bad\"", err)
		}
		rc, _ := r.OpenObject("bad")
		if _, err := io.ReadAll(rc); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("reading corrupt object: %v", err)
		}
		// Nothing was deleted: the manifest and both objects are still there.
		m, err := r.Manifest()
		if err != nil || len(m.Objects) != 2 {
			t.Fatalf("after failed verify: %v, %+v", err, m)
		}
		rc, _ = r.OpenObject("good")
		if _, err := io.ReadAll(rc); err != nil {
			t.Fatalf("good object: %v", err)
		}
	})
}

func TestVerifyMissingAndTruncatedObjects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	if err := Format(path, FormatOptions{Kind: KindDir}); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	writeObject(t, r, "gone", []byte("abc"), 3)
	writeObject(t, r, "short", []byte("abcdef"), 6)
	if err := r.Seal(context.Background(), &Manifest{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(path, objectsDir, "gone"))
	os.Truncate(filepath.Join(path, objectsDir, "short"), 2)
	_, err := r.Verify(context.Background())
	for _, want := range []string{`"gone": missing`, `"short": truncated: 2 of 6 bytes`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Verify = %v; want it to say %s", err, want)
		}
	}
}

func TestManifestDamageIsRefused(t *testing.T) {
	cases := map[string]func(t *testing.T, path string, r *Region){
		"truncated": func(t *testing.T, path string, r *Region) {
			if root, ok := filesRoot(r); ok {
				p := filepath.Join(root, manifestFile)
				st, _ := os.Stat(p)
				os.Truncate(p, st.Size()-10)
				return
			}
			sb := r.st.(*rawStore).sb
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			f.WriteAt(make([]byte, 10), int64(sb.ManifestOff+sb.ManifestLen-10))
		},
		"flipped": func(t *testing.T, path string, r *Region) {
			if root, ok := filesRoot(r); ok {
				flipByte(t, filepath.Join(root, manifestFile), 40)
				return
			}
			flipByte(t, path, int64(r.st.(*rawStore).sb.ManifestOff)+40)
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			kinds(t, 0, func(t *testing.T, path string) {
				r := mustOpen(t, path)
				writeObject(t, r, "a", []byte("payload"), 7)
				if err := r.Seal(context.Background(), &Manifest{}); err != nil {
					t.Fatal(err)
				}
				damage(t, path, r)
				if _, err := r.Verify(context.Background()); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Verify = %v; want ErrCorrupt", err)
				}
			})
		})
	}
}

func TestWrongVersionIsRefused(t *testing.T) {
	m := &Manifest{}
	fillIdentity(m, "x")
	m.Version = 99
	body, _ := json.Marshal(m)
	b, _ := encodeManifest(&Manifest{Version: FormatVersion})
	// Re-frame the version-99 body with a valid header.
	b = append(b[:manifestHeaderLen], body...)
	fixHeader(b)
	if _, err := decodeManifest(b); !errors.Is(err, ErrVersion) {
		t.Fatalf("decode = %v; want ErrVersion", err)
	}
	sb := superblock{Format: 7, Size: uint64(64 * MiB)}
	if _, err := parseSuperblock(sb.encode()); !errors.Is(err, ErrVersion) {
		t.Fatalf("superblock = %v; want ErrVersion", err)
	}
}

func TestCapacity(t *testing.T) {
	kinds(t, 48*MiB, func(t *testing.T, path string) {
		r := mustOpen(t, path)
		if err := r.Fits(1 * MiB); err != nil {
			t.Fatalf("Fits(1 MiB) = %v", err)
		}
		if err := r.Fits(1 * GiB); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Fits(1 GiB) = %v; want ErrNoSpace", err)
		}
		// Filling the region mid-write fails clearly and commits nothing.
		w, err := r.Create("big", 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.Write(make([]byte, 64*MiB))
		if !errors.Is(err, ErrNoSpace) {
			t.Fatalf("overfull write = %v; want ErrNoSpace", err)
		}
		if err := w.Close(); err == nil {
			t.Fatal("Close after a failed write succeeded")
		}
		if err := r.Seal(context.Background(), &Manifest{}); err != nil {
			t.Fatalf("seal without the failed object: %v", err)
		}
		m, _ := r.Manifest()
		if len(m.Objects) != 0 {
			t.Fatalf("failed object committed: %+v", m.Objects)
		}
	})
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "nope"), Options{}); !errors.Is(err, ErrNotFormatted) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotFormatted) {
		t.Errorf("plain directory: %v", err)
	}
	f := filepath.Join(dir, "file")
	os.WriteFile(f, make([]byte, 16*MiB), 0o600)
	if _, err := Open(f, Options{}); !errors.Is(err, ErrNotFormatted) {
		t.Errorf("zero file: %v", err)
	}
	if err := Format(filepath.Join(dir, "tiny"), FormatOptions{Kind: KindRaw, Size: 1 * MiB}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("tiny raw: %v", err)
	}
	for _, bad := range []string{"", "/abs", "../up", "a/../b", "a//b", ".hidden", manifestFile, "a\x00b"} {
		if err := validName(bad); err == nil {
			t.Errorf("validName(%q) accepted", bad)
		}
	}
}

func fixHeader(b []byte) {
	n := len(b) - manifestHeaderLen
	putLE32(b[12:], uint32(n))
	putLE32(b[16:], crc32c(b[manifestHeaderLen:]))
	putLE32(b[20:], crc32c(b[:20]))
}

func TestAdopt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	if err := Format(path, FormatOptions{Kind: KindDir}); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	dir, err := r.ObjectDir("criu/c1/images")
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(9, 3<<20)
	os.WriteFile(filepath.Join(dir, "pages-1.img"), data, 0o600)
	if err := r.Adopt("criu/c1/images/pages-1.img"); err != nil {
		t.Fatal(err)
	}
	if err := r.Adopt("criu/c1/images/pages-1.img"); !errors.Is(err, ErrObjectExists) {
		t.Fatalf("second Adopt: %v", err)
	}
	if err := r.Seal(context.Background(), &Manifest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	cd, err := r.CommittedDir("criu/c1/images")
	if err != nil || cd != dir {
		t.Fatalf("CommittedDir = %q, %v; want %q", cd, err, dir)
	}
	corruptObjectByte(t, r, "criu/c1/images/pages-1.img", 100)
	if _, err := r.Verify(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify after corruption: %v", err)
	}

	raw := filepath.Join(t.TempDir(), "raw")
	Format(raw, FormatOptions{Kind: KindRaw, Size: 64 * MiB})
	rr := mustOpen(t, raw)
	if _, err := rr.ObjectDir("x"); !errors.Is(err, ErrNoDirectAccess) {
		t.Fatalf("raw ObjectDir: %v", err)
	}
}

// A suspend killed before its commit leaves its objects in the region;
// the next process's Discard does not see them, DiscardAll (recover's
// cleanup) drops them and gives the space back. A sealed region is
// refused, with everything kept.
func TestDiscardAllDropsAKilledWritersObjects(t *testing.T) {
	kinds(t, 0, func(t *testing.T, path string) {
		r := mustOpen(t, path)
		_, free0, _ := r.Space()
		writeObject(t, r, "w/a", bytes.Repeat([]byte("x"), 4<<20), 1<<20)
		r.Close() // killed: no Discard
		r2 := mustOpen(t, path)
		if err := r2.Discard(); err != nil {
			t.Fatal(err)
		}
		root, files := filesRoot(r2)
		if files {
			if ents, _ := os.ReadDir(filepath.Join(root, objectsDir, "w")); len(ents) == 0 {
				t.Fatalf("the killed writer's object is not there to discard: the test is wrong")
			}
		}
		if err := r2.DiscardAll(); err != nil {
			t.Fatal(err)
		}
		if files {
			if ents, err := os.ReadDir(filepath.Join(root, objectsDir)); err != nil || len(ents) != 0 {
				t.Fatalf("objects left after DiscardAll: %v %v", ents, err)
			}
		}
		// A raw region's free space is its own; a directory region's is
		// its filesystem's, which other writers move (the listing above
		// is the check there).
		if _, free, _ := r2.Space(); r2.Kind() == KindRaw && free < free0 {
			t.Fatalf("free space %d after DiscardAll, %d before the write", free, free0)
		}
		writeObject(t, r2, "b", []byte("kept"), 4)
		if err := r2.Seal(context.Background(), &Manifest{Workloads: []WorkloadRecord{{ID: "b", Objects: []string{"b"}}}}); err != nil {
			t.Fatal(err)
		}
		if err := r2.DiscardAll(); !errors.Is(err, ErrSealed) {
			t.Fatalf("DiscardAll of a sealed region: %v, want ErrSealed", err)
		}
		if _, err := r2.Verify(context.Background()); err != nil {
			t.Fatalf("after a refused DiscardAll: %v", err)
		}
	})
}
