package memregion

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The fs layout's life across a restart: format, write in place, seal;
// the mount goes (a kexec or soft-reboot unmounts it); the next Open
// finds the layout on the device, mounts it again and verifies. A sealed
// region is refused by a new format, its objects kept; the raw layout
// formatted over it takes ckpt's mount down first; a mount that is not
// ckpt's is never taken down.
func TestFSRegionAcrossARestart(t *testing.T) {
	dev := loopDevice(t, 128*MiB)
	if err := Format(dev, FormatOptions{Kind: KindFS}); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, dev)
	if r.Kind() != KindFS || !r.DirectFiles() || r.Path() != dev {
		t.Fatalf("kind %s, direct files %v, path %s", r.Kind(), r.DirectFiles(), r.Path())
	}
	// A loop device has no DAX: its files go through the page cache.
	if err := r.InPlace(); !errors.Is(err, ErrNoDAX) {
		t.Fatalf("InPlace on a loop device = %v, want ErrNoDAX", err)
	}
	dir, err := r.ObjectDir("criu/c1/images")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dir, FSMountDir+"/") {
		t.Fatalf("ObjectDir %s is not under %s", dir, FSMountDir)
	}
	data := randBytes(3, 5<<20)
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := r.Written()
	writeObject(t, r, "qemu/vm1/ram", data, 1<<20)
	if after, _ := r.Written(); after-before < int64(len(data)) {
		t.Fatalf("Written grew by %d for a %d-byte object", after-before, len(data))
	}
	if err := r.Adopt("criu/c1/images/pages-1.img"); err != nil {
		t.Fatal(err)
	}
	if err := r.Seal(context.Background(), &Manifest{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	// A kexec leaves the filesystem mounted, its journal to replay: a copy
	// of the device taken while mounted opens (the mount replays it) and
	// verifies.
	unix.Sync()
	crashed := loopDeviceOf(t, backingFile(t, dev))
	if cr := mustOpen(t, crashed); true {
		if _, err := cr.Verify(context.Background()); err != nil {
			t.Fatalf("Verify of the device as a kexec leaves it: %v", err)
		}
	}
	if err := unix.Unmount(fsMountPoint(dev), 0); err != nil {
		t.Fatal(err)
	}

	r = mustOpen(t, dev)
	if _, err := r.Verify(context.Background()); err != nil {
		t.Fatalf("Verify after the remount: %v", err)
	}
	cd, err := r.CommittedDir("criu/c1/images")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(cd, "pages-1.img")); err != nil || string(b) != string(data) {
		t.Fatalf("the file read in place after the remount differs (%v)", err)
	}
	r.Close()
	for _, kind := range []string{KindFS, KindRaw, ""} {
		if err := Format(dev, FormatOptions{Kind: kind}); !errors.Is(err, ErrSealed) {
			t.Fatalf("format %q over a sealed fs region = %v, want ErrSealed", kind, err)
		}
	}
	r = mustOpen(t, dev)
	if _, err := r.Verify(context.Background()); err != nil {
		t.Fatalf("Verify after the refused formats: %v", err)
	}
	if err := r.Release(); err != nil {
		t.Fatal(err)
	}
	r.Close()

	// Someone else's mount of the device is left alone.
	other := t.TempDir()
	if err := unix.Unmount(fsMountPoint(dev), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, other, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(other, unix.MNT_DETACH) })
	if err := Format(dev, FormatOptions{Kind: KindRaw}); err == nil || !strings.Contains(err.Error(), "not by ckpt") {
		t.Fatalf("format raw over a mount that is not ckpt's = %v", err)
	}
	if err := unix.Unmount(other, 0); err != nil {
		t.Fatal(err)
	}

	// The raw layout over the fs layout: ckpt's mount goes first.
	mustOpen(t, dev).Close()
	if err := Format(dev, FormatOptions{Kind: KindRaw}); err != nil {
		t.Fatal(err)
	}
	if _, _, mounted, _ := findMount(mustRdev(t, dev)); mounted {
		t.Fatal("ckpt's mount of the old fs layout is still there")
	}
	if r := mustOpen(t, dev); r.Kind() != KindRaw {
		t.Fatalf("kind after the raw format: %s", r.Kind())
	}
}

// backingFile is the file behind loop device dev.
func backingFile(t *testing.T, dev string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// loopDeviceOf attaches a copy of file to a new loop device.
func loopDeviceOf(t *testing.T, file string) string {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(cp, src, 0o600); err != nil {
		t.Fatal(err)
	}
	return loopDeviceFile(t, cp)
}

// A read-only Open of an fs region mounted nowhere mounts it privately,
// read-only, and Close takes that mount down; a writable Open afterwards
// gets ckpt's own mount.
func TestFSReadOnlyOpen(t *testing.T) {
	dev := loopDevice(t, 64*MiB)
	if err := Format(dev, FormatOptions{Kind: KindFS}); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, dev)
	writeObject(t, r, "a", []byte("payload"), 7)
	if err := r.Seal(context.Background(), &Manifest{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := unix.Unmount(fsMountPoint(dev), 0); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(dev, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	point, opts, ok, _ := findMount(mustRdev(t, dev))
	if !ok || point == fsMountPoint(dev) || !hasOpt(opts, "ro") {
		t.Fatalf("read-only open mounted at %q (%s), want a private read-only mount", point, opts)
	}
	ro.Close()
	if _, _, ok, _ := findMount(mustRdev(t, dev)); ok {
		t.Fatal("the read-only open's mount outlived its Close")
	}
	if _, err := os.Stat(point); err == nil {
		t.Fatalf("the read-only mount point %s is left", point)
	}
	rw := mustOpen(t, dev)
	if err := rw.Release(); err != nil {
		t.Fatal(err)
	}
}

// A damaged label or magic is not taken for an unformatted device: a
// format without force refuses it.
func TestFormatRefusesADamagedFSLabel(t *testing.T) {
	dev := loopDevice(t, 64*MiB)
	if err := Format(dev, FormatOptions{Kind: KindFS}); err != nil {
		t.Fatal(err)
	}
	if err := unmountFS(dev); err != nil {
		t.Fatal(err)
	}
	flipByte(t, dev, ext4LabelOff+2)
	if isFSLayout(dev) {
		t.Fatal("a damaged label still reads as the fs layout")
	}
	for _, kind := range []string{"", KindRaw, KindFS} {
		if err := Format(dev, FormatOptions{Kind: kind}); !errors.Is(err, ErrMayHoldCheckpoint) {
			t.Fatalf("format %q over a damaged fs label = %v, want ErrMayHoldCheckpoint", kind, err)
		}
	}
	if err := Format(dev, FormatOptions{Kind: KindRaw, Force: true}); err != nil {
		t.Fatalf("forced format: %v", err)
	}
}

func mustRdev(t *testing.T, dev string) uint64 {
	t.Helper()
	rdev, err := blockDevice(dev)
	if err != nil {
		t.Fatal(err)
	}
	return rdev
}

func TestFindMountIn(t *testing.T) {
	table := `22 1 259:0 /sub /bind rw - ext4 /dev/pmem0 rw
23 1 259:0 / /run/ckpt/fs/pmem0 rw,nosuid - ext4 /dev/pmem0 rw,dax=always
24 1 259:1 / /other rw - ext4 /dev/pmem1 rw
`
	point, opts, ok, err := findMountIn(strings.NewReader(table), "259:0")
	if err != nil || !ok || point != "/run/ckpt/fs/pmem0" || !hasOpt(opts, "dax=always") {
		t.Fatalf("findMountIn = %q %q %v %v", point, opts, ok, err)
	}
	if _, _, ok, _ := findMountIn(strings.NewReader(table), "259:9"); ok {
		t.Fatal("found a mount of a device that has none")
	}
}

// Without a kind, a block device without DAX gets the raw layout (the fs
// layout is the default only where files land in the device's memory),
// and a device keeps the layout it has.
func TestFormatDefaultKind(t *testing.T) {
	dev := loopDevice(t, 64*MiB)
	if DAXCapable(dev) {
		t.Skip("this loop device has DAX")
	}
	if err := Format(dev, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	if k := mustOpen(t, dev).Kind(); k != KindRaw {
		t.Fatalf("default kind on a device without DAX: %s", k)
	}
	if err := Format(dev, FormatOptions{Kind: KindFS}); err != nil {
		t.Fatal(err)
	}
	if err := Format(dev, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	if k := mustOpen(t, dev).Kind(); k != KindFS {
		t.Fatalf("a device formatted again without a kind lost its fs layout: %s", k)
	}
}
