package memregion

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Format prepares path to hold a region. Without opts.Force it refuses
// anything that might hold a checkpoint: a committed checkpoint
// (ErrSealed), or any ckpt marker, superblock or manifest it cannot read,
// of another version, or damaged (ErrMayHoldCheckpoint), and says what it
// found. It never follows a symlink inside a directory region, refuses a
// path owned by another user, and tightens looser modes (0700 for
// directories, 0600 for files). A failed Format leaves a path it did not
// create as it was: contents and mode.
func Format(path string, opts FormatOptions) error {
	kind := opts.Kind
	if kind == "" {
		kind = defaultKind(path)
	}
	if kind != KindDir && kind != KindRaw && kind != KindFS {
		return fmt.Errorf("format %s: unknown region kind %q", path, kind)
	}
	if !opts.Force {
		if err := refuseExisting(path); err != nil {
			return fmt.Errorf("format %s: %w (release it or pass force)", path, err)
		}
	}
	var err error
	switch kind {
	case KindDir:
		err = formatDir(path, opts.Force)
	case KindFS:
		err = formatFS(path)
	default:
		if err = unmountFS(path); err == nil {
			err = formatRaw(path, opts.Size)
		}
	}
	if err != nil {
		return fmt.Errorf("format %s: %w", path, err)
	}
	return nil
}

// defaultKind is the layout Format gives path when none is asked for:
// the one it has, and for a block device with DAX that has none of ours,
// the fs layout, which takes files in place (see the package doc).
func defaultKind(path string) string {
	kind := detectKind(path)
	if kind != KindRaw || !DAXCapable(path) || os.Getpagesize() != 4096 {
		return kind // ext4 maps DAX files with blocks of the page size
	}
	if err := sniffRaw(path); err != nil || hasRawSuperblock(path) {
		return KindRaw // a raw region's checkpoint is refused as raw
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return KindRaw
	}
	return KindFS
}

// hasRawSuperblock reports whether path starts with a raw region's magic.
func hasRawSuperblock(path string) bool {
	f, err := openDevice(path, unix.O_RDONLY)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, len(superMagic))
	_, err = f.ReadAt(b, 0)
	return err == nil && bytes.Equal(b, superMagic[:])
}

// refuseExisting returns an error saying what it found when path might
// hold a checkpoint.
func refuseExisting(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return sniffDir(path)
	}
	if st.Mode()&fs.ModeDevice != 0 {
		switch fsLayoutOf(path) {
		case fsExact:
			return sniffFS(path)
		case fsNear:
			return fmt.Errorf("%w: found an ext4 superblock whose magic or ckpt label is damaged", ErrMayHoldCheckpoint)
		}
	}
	return sniffRaw(path)
}

func sniffDir(path string) error {
	root, err := openRoot(path)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	marker, manifest := entryExists(root, markerFile), entryExists(root, manifestFile)
	switch {
	case !marker && !manifest:
		return nil
	case !marker:
		return fmt.Errorf("%w: found a %s but no %s", ErrMayHoldCheckpoint, manifestFile, markerFile)
	}
	d, err := openDir(path)
	if err != nil {
		return fmt.Errorf("%w: found a ckpt marker that does not open: %w", ErrMayHoldCheckpoint, err)
	}
	defer d.close()
	return refuseManifest(d)
}

func entryExists(dirfd int, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// refuseManifest refuses a store whose manifest is committed or unreadable.
func refuseManifest(st store) error {
	b, err := st.readManifest()
	if errors.Is(err, ErrNotSealed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: found a manifest that does not read: %w", ErrMayHoldCheckpoint, err)
	}
	m, err := decodeManifest(b)
	if err != nil {
		return fmt.Errorf("%w: found a damaged manifest: %w", ErrMayHoldCheckpoint, err)
	}
	return fmt.Errorf("%w: found a committed checkpoint of %d objects sealed at %s", ErrSealed, len(m.Objects), m.Created.Format("2006-01-02 15:04:05Z07:00"))
}

func sniffRaw(path string) error {
	f, err := openDevice(path, unix.O_RDONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, rawSuperblockLen)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if !nearMagic(b[:n], superMagic[:]) {
		return nil
	}
	if !bytes.Equal(b[:len(superMagic)], superMagic[:]) {
		return fmt.Errorf("%w: found a ckpt superblock with a damaged magic %q", ErrMayHoldCheckpoint, b[:len(superMagic)])
	}
	sb, err := parseSuperblock(b[:n])
	if err != nil {
		return fmt.Errorf("%w: found a ckpt superblock that does not parse: %w", ErrMayHoldCheckpoint, err)
	}
	if sb.ManifestOff != 0 {
		return fmt.Errorf("%w: found a committed checkpoint (superblock generation %d)", ErrSealed, sb.Generation)
	}
	return nil
}

// nearMagic reports whether b starts with magic or something a few bit
// flips from it: a damaged superblock still counts as one.
func nearMagic(b, magic []byte) bool {
	if len(b) < len(magic) {
		return false
	}
	d := 0
	for i := range magic {
		d += bits.OnesCount8(b[i] ^ magic[i])
	}
	return d <= 6
}

// checkOwner refuses a path that belongs to another user: that user
// could change the region under us.
func checkOwner(path string, uid uint32) error {
	if me := uint32(os.Geteuid()); uid != me {
		return &UnsafeError{path, fmt.Sprintf("is owned by uid %d; a region must belong to uid %d", uid, me)}
	}
	return nil
}

// undo collects the reversal of each change a format made, run in
// reverse order if the format fails.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// formatDir makes path a dir region. A directory it creates is removed
// again if the format fails.
func formatDir(path string, force bool) error {
	created := false
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(path, 0o700); err != nil {
			return err
		}
		created = true
	}
	err := formatDirAt(path, force)
	if err != nil && created {
		os.Remove(path)
	}
	return err
}

func formatDirAt(path string, force bool) (err error) {
	root, err := openRoot(path)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	var st unix.Stat_t
	if err := unix.Fstat(root, &st); err != nil {
		return err
	}
	if err := checkOwner(path, st.Uid); err != nil {
		return err
	}
	if err := checkFormatEntries(root); err != nil {
		return err
	}
	var u undo
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	if err := tighten(root, st.Mode, 0o700, &u); err != nil {
		return err
	}
	if err := ensureObjectsDir(root, &u); err != nil {
		return err
	}
	return writeMarker(root, force, &u)
}

// checkFormatEntries refuses, before anything changes, entries a format
// could not replace without following them or failing halfway.
func checkFormatEntries(root int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(root, objectsDir, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return &UnsafeError{objectsDir, "is " + fileType(st.Mode) + ", not a directory"}
	}
	if err := unix.Fstatat(root, markerFile, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return &UnsafeError{markerFile, "is a directory"}
	}
	return nil
}

// tighten sets fd's permission bits to perm when they differ.
func tighten(fd int, mode, perm uint32, u *undo) error {
	if mode&0o7777 == perm {
		return nil
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("chmod %#o: %w", perm, err)
	}
	u.push(func() { unix.Fchmod(fd, mode&0o7777) })
	return nil
}

func ensureObjectsDir(root int, u *undo) error {
	err := unix.Mkdirat(root, objectsDir, 0o700)
	if err == nil {
		u.push(func() { unix.Unlinkat(root, objectsDir, unix.AT_REMOVEDIR) })
		return nil
	}
	if err != unix.EEXIST {
		return &os.PathError{Op: "mkdir", Path: objectsDir, Err: err}
	}
	fd, err := openBeneath(root, objectsDir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return beneathError("open", objectsDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return err
	}
	if err := checkOwner(objectsDir, st.Uid); err != nil {
		unix.Close(fd)
		return err
	}
	err = tighten(fd, st.Mode, 0o700, u)
	u.push(func() { unix.Close(fd) }) // kept open for the undo above
	return err
}

// writeMarker writes a new marker under a temporary name and renames it
// into place (replacing an old marker or a symlink, never following it).
// With force, a committed manifest goes too.
func writeMarker(root int, force bool, u *undo) error {
	b, _ := json.Marshal(dirMarker{Format: FormatVersion, ID: newID()})
	tmp := markerFile + "." + newID()[:8] + ".tmp"
	if err := writeNew(root, tmp, b); err != nil {
		unlinkBeneath(root, tmp)
		return err
	}
	u.push(func() { unlinkBeneath(root, tmp) })
	if force {
		if err := removeTree(root, manifestFile); err != nil {
			return err
		}
	}
	if err := unix.Renameat(root, tmp, root, markerFile); err != nil {
		return &os.PathError{Op: "rename", Path: markerFile, Err: err}
	}
	return syncFd(root)
}

// formatRaw writes a fresh superblock to path, creating a file of size
// bytes when there is none. On failure a file it created is removed and
// an existing one gets its first bytes, size and mode back.
func formatRaw(path string, size int64) (err error) {
	f, created, err := openOrCreateRaw(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var u undo
	if created {
		u.push(func() { os.Remove(path) })
	}
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	regular := st.Mode&unix.S_IFMT == unix.S_IFREG
	if regular {
		if err := checkOwner(path, st.Uid); err != nil {
			return err
		}
	}
	have, err := reserveRaw(f, path, size, &u)
	if err != nil {
		return err
	}
	if have < rawMinSize {
		return fmt.Errorf("%w: %s has %s, a raw region needs at least %s", ErrNoSpace, path, HumanBytes(have), HumanBytes(rawMinSize))
	}
	if regular {
		if err := tighten(int(f.Fd()), st.Mode, 0o600, &u); err != nil {
			return err
		}
	}
	return writeFreshSuperblock(f, have, &u)
}

func openOrCreateRaw(path string) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, false, err
	}
	// O_EXCL on a block device: the kernel refuses it while any mount, in
	// any mount namespace, holds the device (an fs region still mounted).
	f, err = openDevice(path, unix.O_RDWR|unix.O_EXCL)
	if errors.Is(err, unix.EBUSY) {
		err = fmt.Errorf("%s is in use (mounted, perhaps in another mount namespace): %w", path, err)
	}
	return f, false, err
}

// reserveRaw gives an empty file its size now, so a full filesystem fails
// the format instead of a write into the mapping later.
func reserveRaw(f *os.File, path string, size int64, u *undo) (int64, error) {
	have, err := deviceSize(f)
	if err != nil || have != 0 || size <= 0 {
		return have, err
	}
	u.push(func() { f.Truncate(0) })
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		return 0, fmt.Errorf("%w: reserving %s for %s: %v", ErrNoSpace, HumanBytes(size), path, err)
	}
	return size, nil
}

func writeFreshSuperblock(f *os.File, have int64, u *undo) error {
	old := make([]byte, rawSuperblockLen)
	if _, err := f.ReadAt(old, 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	sb := superblock{Format: FormatVersion, Size: uint64(have)}
	copy(sb.ID[:], mustHex(newID()))
	u.push(func() { f.WriteAt(old, 0); f.Sync() })
	if _, err := f.WriteAt(sb.encode(), 0); err != nil {
		return err
	}
	return f.Sync()
}
