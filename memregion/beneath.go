package memregion

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Every path inside a dir region is resolved relative to a descriptor of
// the region's root, never as a string: openat2 with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS (or, where openat2 is missing, openat with
// O_NOFOLLOW one component at a time), so that no symlink, "..", or
// mount point inside the region leads out of it. Files are opened with
// O_NONBLOCK and checked with fstat before use, so a FIFO, socket or
// device node is refused instead of blocking or being read.

// resolveBeneath are the openat2 resolve flags for every lookup.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS |
	unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// noOpenat2 is set the first time the kernel says ENOSYS (or by a test
// of the component-by-component fallback).
var noOpenat2 atomic.Bool

// maxTreeDepth bounds recursion over a region's directories (object names
// are at most 1024 bytes, so at most 512 components).
const maxTreeDepth = 600

// openBeneath opens name, a slash-separated path relative to dirfd, without
// following any symlink or leaving dirfd's tree. O_NOFOLLOW and O_CLOEXEC
// are always added.
func openBeneath(dirfd int, name string, flags int, mode uint32) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if flags&unix.O_CREAT == 0 {
		mode = 0
	}
	if !noOpenat2.Load() {
		fd, err := openat2Retry(dirfd, name, flags, mode)
		if err != unix.ENOSYS {
			return fd, err
		}
		noOpenat2.Store(true) // kernel < 5.6
	}
	return openWalk(dirfd, name, flags, mode)
}

func openat2Retry(dirfd int, name string, flags int, mode uint32) (int, error) {
	how := &unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: resolveBeneath}
	for range 16 {
		fd, err := unix.Openat2(dirfd, name, how)
		if err != unix.EAGAIN && err != unix.EINTR { // EAGAIN: a rename raced the lookup
			return fd, err
		}
	}
	return -1, unix.EAGAIN
}

// openWalk is openBeneath without openat2: each directory component is
// opened with O_NOFOLLOW|O_DIRECTORY, and ".." is refused.
func openWalk(dirfd int, name string, flags int, mode uint32) (int, error) {
	parts := strings.Split(name, "/")
	cur := dirfd
	for i, c := range parts {
		if c == "" || c == "." || c == ".." {
			closeUnless(cur, dirfd)
			return -1, unix.EXDEV
		}
		if i == len(parts)-1 {
			fd, err := unix.Openat(cur, c, flags, mode)
			closeUnless(cur, dirfd)
			return fd, err
		}
		next, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		closeUnless(cur, dirfd)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return -1, unix.EINVAL
}

func closeUnless(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}

// beneathError turns a lookup error into an *UnsafeError when it means
// the path was refused, and into an *os.PathError otherwise.
func beneathError(op, name string, err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return &UnsafeError{name, "is or passes through a symlink"}
	case errors.Is(err, unix.EXDEV):
		return &UnsafeError{name, "leaves the region (\"..\", an absolute path or a mount point)"}
	case errors.Is(err, unix.ENOTDIR):
		return &UnsafeError{name, "passes through something that is not a directory"}
	case errors.Is(err, unix.ENXIO):
		return &UnsafeError{name, "is a socket or a device without a driver"}
	}
	return &os.PathError{Op: op, Path: name, Err: err}
}

// fileType names the type of a stat mode for error messages.
func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("of unknown type %#o", mode&unix.S_IFMT)
}

// openRegular opens name beneath dirfd for reading (flags O_RDONLY) or
// writing, and refuses anything but a regular file without blocking: the
// entry is looked up with O_PATH and checked with fstat before it is
// opened for real, and the real open (O_NONBLOCK) must find the same file.
func openRegular(dirfd int, name string, flags int) (*os.File, error) {
	pfd, err := openBeneath(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return nil, beneathError("open", name, err)
	}
	first, err := fstatRegular(pfd, name)
	unix.Close(pfd)
	if err != nil {
		return nil, err
	}
	fd, err := openBeneath(dirfd, name, flags|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, beneathError("open", name, err)
	}
	st, err := fstatRegular(fd, name)
	if err == nil && (st.Dev != first.Dev || st.Ino != first.Ino) {
		err = &UnsafeError{name, "was replaced while it was opened"}
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func fstatRegular(fd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return st, &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return st, &UnsafeError{name, "is " + fileType(st.Mode) + ", not a regular file"}
	}
	return st, nil
}

// readCapped reads the regular file name beneath dirfd, refusing one
// larger than limit before reading it.
func readCapped(dirfd int, name string, limit int64) ([]byte, error) {
	f, err := openRegular(dirfd, name, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%w: %s is %s, above the %s limit for metadata", ErrCorrupt, name, HumanBytes(st.Size()), HumanBytes(limit))
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%w: %s grew above the %s limit for metadata", ErrCorrupt, name, HumanBytes(limit))
	}
	return b, err
}

// createExcl creates the new regular file name beneath dirfd (0600).
// O_EXCL never follows a symlink in the last component.
func createExcl(dirfd int, name string) (*os.File, error) {
	fd, err := openBeneath(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		return nil, beneathError("create", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openDir opens the directory name beneath dirfd (O_PATH: for *at calls).
func openDirBeneath(dirfd int, name string) (int, error) {
	fd, err := openBeneath(dirfd, name, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, beneathError("open", name, err)
	}
	return fd, nil
}

// splitParent splits a slash-separated name into its parent ("" for none)
// and last component.
func splitParent(name string) (string, string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// parentFd opens name's parent directory beneath dirfd; the caller closes
// the result unless it is dirfd itself.
func parentFd(dirfd int, name string) (int, string, error) {
	dir, base := splitParent(name)
	if dir == "" {
		return dirfd, base, nil
	}
	fd, err := openDirBeneath(dirfd, dir)
	return fd, base, err
}

// mkdirAll makes every directory of name beneath dirfd (0700), refusing a
// component that is a symlink or not a directory.
func mkdirAll(dirfd int, name string) error {
	cur := dirfd
	defer func() { closeUnless(cur, dirfd) }()
	for c := range strings.SplitSeq(name, "/") {
		if err := unix.Mkdirat(cur, c, 0o700); err != nil && err != unix.EEXIST {
			return &os.PathError{Op: "mkdir", Path: name, Err: err}
		}
		next, err := openDirBeneath(cur, c)
		if err != nil {
			return relabel(err, name)
		}
		closeUnless(cur, dirfd)
		cur = next
	}
	return nil
}

// relabel puts the full name into an *UnsafeError from a one-component lookup.
func relabel(err error, name string) error {
	var ue *UnsafeError
	if errors.As(err, &ue) {
		return &UnsafeError{name, ue.Reason}
	}
	return err
}

// unlinkBeneath removes the non-directory name beneath dirfd; a symlink
// is removed itself, never its target. A missing entry is no error.
func unlinkBeneath(dirfd int, name string) error {
	pfd, base, err := parentFd(dirfd, name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return relabel(err, name)
	}
	defer closeUnless(pfd, dirfd)
	if err := unix.Unlinkat(pfd, base, 0); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// removeTree removes name beneath dirfd and, if it is a directory,
// everything under it, with unlinkat relative to directory descriptors
// opened O_NOFOLLOW: a symlink is unlinked, never followed.
func removeTree(dirfd int, name string) error {
	pfd, base, err := parentFd(dirfd, name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return relabel(err, name)
	}
	defer closeUnless(pfd, dirfd)
	if err := removeAt(pfd, base, 0); err != nil {
		return fmt.Errorf("removing %s: %w", name, err)
	}
	return nil
}

func removeAt(dirfd int, name string, depth int) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	if depth > maxTreeDepth {
		return fmt.Errorf("directories nested deeper than %d", maxTreeDepth)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	for _, n := range names {
		if err != nil {
			break
		}
		err = removeAt(fd, n, depth+1)
	}
	f.Close()
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// checkTree refuses any entry under the directory fd that is neither a
// regular file nor a directory (symlinks, FIFOs, sockets, devices).
func checkTree(fd int, name string, depth int) error {
	if depth > maxTreeDepth {
		return &UnsafeError{name, fmt.Sprintf("nests directories deeper than %d", maxTreeDepth)}
	}
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(dfd), name)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "stat", Path: name + "/" + n, Err: err}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFDIR:
			sub, err := openDirBeneath(dfd, n)
			if err != nil {
				return relabel(err, name+"/"+n)
			}
			err = checkTree(sub, name+"/"+n, depth+1)
			unix.Close(sub)
			if err != nil {
				return err
			}
		default:
			return &UnsafeError{name + "/" + n, "is " + fileType(st.Mode)}
		}
	}
	return nil
}
