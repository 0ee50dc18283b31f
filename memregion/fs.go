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
	dev string // the region's path: the block device
	dax bool   // mounted with DAX: files are the device's memory
}

func (s *fsStore) kind() string { return KindFS }

// isFSLayout reports whether the block device at path holds a filesystem
// ckpt made (an ext4 labelled ckpt-region). It reads a few bytes only.
func isFSLayout(path string) bool {
	f, err := openDevice(path, unix.O_RDONLY)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeDevice == 0 {
		return false
	}
	b := make([]byte, ext4SniffBytes)
	if _, err := f.ReadAt(b, 0); err != nil {
		return false
	}
	label := string(bytes.TrimRight(b[ext4LabelOff:], "\x00"))
	return binary.LittleEndian.Uint16(b[ext4MagicOff:]) == ext4Magic && label == fsLabel
}

// openFS mounts the region's filesystem (when no mount of it is there
// yet) and opens the dir region at its root.
func openFS(path string) (*fsStore, error) {
	mnt, dax, err := mountFS(path)
	if err != nil {
		return nil, err
	}
	d, err := openDir(mnt)
	if err != nil {
		return nil, err
	}
	return &fsStore{dirStore: d, dev: path, dax: dax}, nil
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
// mounting it at its mount point first when it is nowhere (with DAX where
// the device has it).
func mountFS(path string) (string, bool, error) {
	rdev, err := blockDevice(path)
	if err != nil {
		return "", false, err
	}
	if point, opts, ok, err := findMount(rdev); err != nil {
		return "", false, err
	} else if ok {
		return point, hasOpt(opts, "dax") || hasOpt(opts, "dax=always"), nil
	}
	mnt := fsMountPoint(path)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return "", false, err
	}
	dax := DAXCapable(path)
	data := ""
	if dax {
		data = "dax"
	}
	if err := unix.Mount(path, mnt, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return "", false, fmt.Errorf("mount %s on %s (ext4 %s): %w", path, mnt, data, err)
	}
	return mnt, dax, nil
}

// unmountFS unmounts the block device at path from ckpt's mount point; a
// mount elsewhere (not ckpt's) is refused. A device mounted nowhere, or a
// path that is no block device, has nothing to unmount.
func unmountFS(path string) error {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil
	}
	rdev := st.Rdev
	for {
		point, _, ok, err := findMount(rdev)
		if err != nil || !ok {
			return err
		}
		if point != fsMountPoint(path) {
			return fmt.Errorf("%s is mounted at %s, not by ckpt: unmount it first", path, point)
		}
		if err := unix.Unmount(point, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", point, err)
		}
	}
}

// findMount finds a mount of the whole filesystem on device rdev in this
// mount namespace: its mount point and options.
func findMount(rdev uint64) (point, opts string, ok bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", false, err
	}
	defer f.Close()
	return findMountIn(f, fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
}

// findMountIn is findMount on a mountinfo table: the first mount of the
// filesystem's root (a bind mount of a subdirectory does not count).
func findMountIn(r io.Reader, majmin string) (point, opts string, ok bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point options [optional...] - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[2] != majmin || f[3] != "/" {
			continue
		}
		super := ""
		for i := 6; i < len(f); i++ {
			if f[i] == "-" && i+3 < len(f) {
				super = f[i+3]
				break
			}
		}
		return unescapeMount(f[4]), f[5] + "," + super, true, nil
	}
	return "", "", false, sc.Err()
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
	mnt, _, err := mountFS(path)
	if err != nil {
		return fmt.Errorf("%w: found a ckpt filesystem that does not mount: %w", ErrMayHoldCheckpoint, err)
	}
	return sniffDir(mnt)
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
	mnt, _, err := mountFS(path)
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
