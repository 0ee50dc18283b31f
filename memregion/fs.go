package memregion

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The fs layout: an ext4 filesystem that ckpt makes on a block device and
// mounts itself, with a dir region at its root. On a pmem device (memmap=
// or an NVDIMM namespace) it is mounted with DAX: a file written there is
// written straight into the preserved memory, with no page cache, so CRIU
// and QEMU write their state in place, one copy, and read it back in
// place at restore. The raw layout on the same device costs a staging
// copy in RAM for every backend that writes files.
//
// The device is named by the region's path (/dev/pmem0); the filesystem
// is mounted at FSMountDir/<device name> by whoever opens it first, and
// stays mounted (every ckpt command of a boot shares it). After a kexec
// or a soft-reboot the next Open mounts it again.

// FSMountDir is where Open mounts an fs region's filesystem.
var FSMountDir = "/run/ckpt/fs"

// fsLabel marks a filesystem as a ckpt region (ext4's volume name).
const fsLabel = "ckpt-region"

// ext4 superblock fields, at byte 1024 of the device.
const (
	ext4SuperOff   = 1024
	ext4MagicOff   = ext4SuperOff + 0x38
	ext4LabelOff   = ext4SuperOff + 0x78
	ext4Magic      = 0xEF53
	ext4SniffBytes = ext4LabelOff + 16
)

// fsStore is a dir store on the filesystem ckpt mounted from a device.
type fsStore struct {
	*dirStore
	dev     string // the region's path: the block device
	dax     bool   // mounted with DAX: files are the device's memory
	unmount string // a private read-only mount of this Open, for Close
}

func (s *fsStore) kind() string { return KindFS }

// isFSLayout reports whether the block device at path holds a filesystem
// ckpt made (an ext4 labelled ckpt-region). It reads a few bytes only.
func isFSLayout(path string) bool { return fsLayoutOf(path) == fsExact }

// How much a device's first bytes look like the fs layout.
const (
	fsNone  = iota
	fsNear  // a damaged magic or label: it may hold a checkpoint
	fsExact // ext4's magic and ckpt's label
)

func fsLayoutOf(path string) int {
	f, err := openDevice(path, unix.O_RDONLY)
	if err != nil {
		return fsNone
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeDevice == 0 {
		return fsNone
	}
	b := make([]byte, ext4SniffBytes)
	if _, err := f.ReadAt(b, 0); err != nil {
		return fsNone
	}
	magic := b[ext4MagicOff : ext4MagicOff+2]
	label := b[ext4LabelOff : ext4LabelOff+len(fsLabel)+1]
	want := append([]byte(fsLabel), 0)
	var wantMagic [2]byte
	binary.LittleEndian.PutUint16(wantMagic[:], ext4Magic)
	switch {
	case bytes.Equal(magic, wantMagic[:]) && bytes.Equal(label, want):
		return fsExact
	case bytes.Equal(magic, wantMagic[:]) && nearMagic(label, want),
		nearMagic(magic, wantMagic[:]) && bytes.Equal(label, want):
		return fsNear
	}
	return fsNone
}

// openFS mounts the region's filesystem (when no mount of it is there
// yet) and opens the dir region at its root. Read-only, a filesystem
// mounted nowhere gets a private read-only mount that Close takes down.
func openFS(path string, readOnly bool) (*fsStore, error) {
	rdev, err := blockDevice(path)
	if err != nil {
		return nil, err
	}
	mnt, dax, private, err := mountFS(path, readOnly)
	if err != nil {
		return nil, err
	}
	undo := func() {
		if private {
			unix.Unmount(mnt, unix.MNT_DETACH)
			os.Remove(mnt)
		}
	}
	d, err := openDir(mnt)
	if err != nil {
		undo()
		return nil, err
	}
	// The directory opened must be the device's filesystem, not something
	// mounted over its mount point since.
	var st unix.Stat_t
	if err := unix.Fstat(d.root, &st); err != nil || st.Dev != rdev {
		d.close()
		undo()
		if err == nil {
			err = &UnsafeError{mnt, fmt.Sprintf("is not the filesystem of %s", path)}
		}
		return nil, err
	}
	s := &fsStore{dirStore: d, dev: path, dax: dax}
	if private {
		s.unmount = mnt
	}
	return s, nil
}

func (s *fsStore) close() error {
	err := s.dirStore.close()
	if s.unmount != "" {
		if uerr := unix.Unmount(s.unmount, unix.MNT_DETACH); err == nil {
			err = uerr
		}
		os.Remove(s.unmount)
	}
	return err
}

// blockDevice returns path's device number, refusing anything but a
// block device.
func blockDevice(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, &UnsafeError{path, "is " + fileType(st.Mode) + "; the fs layout needs a block device"}
	}
	return st.Rdev, nil
}

// fsMountPoint is where ckpt mounts the device at path.
func fsMountPoint(path string) string {
	name, err := filepath.EvalSymlinks(path)
	if err != nil {
		name = path
	}
	return filepath.Join(FSMountDir, filepath.Base(name))
}

// DAXCapable reports whether the block device at path can be mounted
// with DAX (the kernel gives it struct pages: a memmap= pmem device, or
// an NVDIMM namespace in fsdax mode).
func DAXCapable(path string) bool {
	rdev, err := blockDevice(path)
	if err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/queue/dax", unix.Major(rdev), unix.Minor(rdev)))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// mountFS returns where the filesystem on the device at path is mounted,
// mounting it at its mount point first when it is nowhere, with DAX where
// the device has it (a kernel that refuses DAX for it gets a plain mount:
// InPlace then says so). readOnly mounts nowhere shared: a private
// read-only mount (private true) is the caller's to take down.
func mountFS(path string, readOnly bool) (mnt string, dax, private bool, err error) {
	rdev, err := blockDevice(path)
	if err != nil {
		return "", false, false, err
	}
	if point, opts, ok, err := findMount(rdev); err != nil {
		return "", false, false, err
	} else if ok {
		return point, hasOpt(opts, "dax") || hasOpt(opts, "dax=always"), false, nil
	}
	if err := os.MkdirAll(FSMountDir, 0o700); err != nil {
		return "", false, false, err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if readOnly {
		flags |= unix.MS_RDONLY
		if mnt, err = os.MkdirTemp(FSMountDir, filepath.Base(fsMountPoint(path))+".ro-"); err != nil {
			return "", false, false, err
		}
	} else {
		mnt = fsMountPoint(path)
		if err := os.MkdirAll(mnt, 0o700); err != nil {
			return "", false, false, err
		}
	}
	dax = DAXCapable(path)
	if dax {
		if unix.Mount(path, mnt, "ext4", flags, "dax") == nil {
			return mnt, true, readOnly, nil
		}
		dax = false
	}
	if err := unix.Mount(path, mnt, "ext4", flags, ""); err != nil {
		if readOnly {
			os.Remove(mnt)
		}
		return "", false, false, fmt.Errorf("mount %s on %s (ext4): %w", path, mnt, err)
	}
	return mnt, false, readOnly, nil
}

// unmountFS unmounts the block device at path from ckpt's mount point;
// any other mount of it (elsewhere, or of a subdirectory) is refused. A
// device mounted nowhere, or a path that is no block device, has nothing
// to unmount. Mounts in other namespaces are not seen here: the raw
// format's exclusive open and mkfs refuse a device they hold.
func unmountFS(path string) error {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil
	}
	ours := fsMountPoint(path)
	if real, err := filepath.EvalSymlinks(ours); err == nil {
		ours = real
	}
	for {
		point, root, ok, err := anyMount(st.Rdev)
		if err != nil || !ok {
			return err
		}
		if point != ours || root != "/" {
			return fmt.Errorf("%s is mounted at %s, not by ckpt: unmount it first", path, point)
		}
		if err := unix.Unmount(point, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", point, err)
		}
	}
}

// anyMount finds a mount of device rdev, of its root or of a subdirectory.
func anyMount(rdev uint64) (point, root string, ok bool, err error) {
	ms, err := mountsOf(rdev)
	if err != nil || len(ms) == 0 {
		return "", "", false, err
	}
	return ms[0].point, ms[0].root, true, nil
}

// findMount finds a mount of the whole filesystem on device rdev in this
// mount namespace: its mount point and options.
func findMount(rdev uint64) (point, opts string, ok bool, err error) {
	ms, err := mountsOf(rdev)
	return firstRoot(ms, err)
}

// findMountIn is findMount on a mountinfo table: the first mount of the
// filesystem's root (a bind mount of a subdirectory does not count).
func findMountIn(r io.Reader, majmin string) (point, opts string, ok bool, err error) {
	return firstRoot(parseMounts(r, majmin))
}

func firstRoot(ms []devMount, err error) (point, opts string, ok bool, _ error) {
	for _, m := range ms {
		if m.root == "/" {
			return m.point, m.opts, true, nil
		}
	}
	return "", "", false, err
}

// devMount is one mount of a device: where, which of its directories,
// and its mount and superblock options.
type devMount struct{ point, root, opts string }

// mountsOf lists this thread's mount namespace's mounts of device rdev.
func mountsOf(rdev uint64) ([]devMount, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMounts(f, fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
}

func parseMounts(r io.Reader, majmin string) ([]devMount, error) {
	var ms []devMount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point options [optional...] - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[2] != majmin {
			continue
		}
		super := ""
		for i := 6; i < len(f); i++ {
			if f[i] == "-" && i+3 < len(f) {
				super = f[i+3]
				break
			}
		}
		ms = append(ms, devMount{point: unescapeMount(f[4]), root: unescapeMount(f[3]), opts: f[5] + "," + super})
	}
	return ms, sc.Err()
}

func hasOpt(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// sniffFS refuses an fs region that might hold a checkpoint, as sniffDir
// does for a directory.
func sniffFS(path string) error {
	st, err := openFS(path, true)
	if err != nil {
		return fmt.Errorf("%w: found a ckpt filesystem that does not mount: %w", ErrMayHoldCheckpoint, err)
	}
	defer st.close()
	return sniffDir(st.dir)
}

// formatFS makes a new ext4 filesystem on the block device at path and a
// dir region at its root. ckpt's own mount of an old one goes first.
func formatFS(path string) error {
	if _, err := blockDevice(path); err != nil {
		return err
	}
	if err := unmountFS(path); err != nil {
		return err
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("the fs layout needs mkfs.ext4 (e2fsprogs): %w", err)
	}
	// 4 KiB blocks (DAX needs the page size), no blocks kept for root, and
	// every table written now rather than by a kernel thread later.
	cmd := exec.Command(mkfs, "-F", "-q", "-L", fsLabel, "-b", "4096", "-m", "0",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	mnt, _, _, err := mountFS(path, false)
	if err != nil {
		return err
	}
	if err := formatDirAt(mnt, true); err != nil {
		return err
	}
	// The filesystem's own metadata, on the device before the format returns.
	if fd, err := openRoot(mnt); err == nil {
		unix.Syncfs(fd)
		unix.Close(fd)
	}
	return nil
}

// ErrNoDAX means an fs region is mounted without DAX: its files go
// through the page cache, so they take RAM until written back.
var ErrNoDAX = errors.New("region: filesystem not mounted with DAX")

// InPlace reports whether files written into the region land in its
// medium directly, taking no RAM beyond it: a dir region (on tmpfs it
// is the RAM itself; on a disk the page cache is reclaimable) or an fs
// region mounted with DAX. The raw layout takes no files.
func (r *Region) InPlace() error {
	switch s := r.st.(type) {
	case *dirStore:
		return nil
	case *fsStore:
		if !s.dax {
			return fmt.Errorf("%w: %s", ErrNoDAX, s.dev)
		}
		return nil
	}
	return ErrNoDirectAccess
}
