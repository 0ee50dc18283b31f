package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"golang.org/x/sys/unix"
)

// A lazy restore (runc restore --lazy-pages) lets the container run before
// its memory is back: each task's restorer registers its private memory
// with a userfaultfd and hands the descriptor to CRIU's lazy-pages daemon,
// which copies a page in when a task touches it and the rest in the
// background, then exits 0.
//
// When that daemon dies early (a crash, a kill, a read error from a
// damaged region), the kernel would drop its userfaultfds, and every page
// not yet copied would read as zeros: the container would run on silently
// wrong memory. So ckpt holds a copy of each of the daemon's userfaultfds
// (pidfd_getfd) for as long as the daemon runs: with the descriptor still
// open, a task that touches a missing page waits for an answer instead of
// reading zeros. A daemon that fails gets its container killed (SIGKILL
// wakes the waiting tasks), and only then are the copies closed; the
// region keeps the images for another restore.

// lazyPages is one lazy-pages daemon serving one restore.
type lazyPages struct {
	id, work string
	cmd      *exec.Cmd
	done     chan struct{}
	err      error // the daemon's exit, set before done is closed

	mu     sync.Mutex
	pidfd  int
	held   []int // our copies of the daemon's userfaultfds
	closed bool
}

// Tests: lazyStarted is told the pid of each lazy-pages daemon once it is
// ready; lazyKillDelay holds back the kill of a container whose daemon
// failed, to show that it does not run meanwhile.
var (
	lazyStarted   func(pid int)
	lazyKillDelay time.Duration
)

// uffdLink is what /proc/PID/fd/N says of a userfaultfd.
const uffdLink = "anon_inode:[userfaultfd]"

// startLazyPages starts criu lazy-pages on the images in img, listening in
// work (runc restore --work-path work connects to it), and returns once it
// listens.
func (r *Runtime) startLazyPages(id, img, work string) (*lazyPages, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	cmd := exec.Command(r.cfg.CRIU, "lazy-pages", "--images-dir", img, "--work-dir", work,
		"--log-file", "lazy-pages.log", "--status-fd", "3")
	cmd.ExtraFiles = []*os.File{pw}
	// Its own session: a ^C to ckpt's terminal must not take the pages
	// away from a running container. A pidfd from the start: signals and
	// pidfd_getfd never reach another process that reused its pid.
	pidfd := -1
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	lp := &lazyPages{id: id, work: work, cmd: cmd, done: make(chan struct{}), pidfd: pidfd}
	go func() { lp.err = cmd.Wait(); close(lp.done) }()
	if err := lp.canHold(); err != nil {
		lp.abort()
		return nil, err
	}
	// CRIU writes one byte to --status-fd once its socket listens; EOF
	// means it ended first. Either way nothing was restored yet: the
	// caller restores in full instead.
	pr.SetReadDeadline(time.Now().Add(lazyStartTimeout))
	if _, err := pr.Read(make([]byte, 1)); err != nil {
		lp.abort()
		return nil, fmt.Errorf("%w: %w", hypervisors.ErrNotSupported, lp.failure(fmt.Errorf("did not start (%v): %v", err, lp.err)))
	}
	if lazyStarted != nil {
		lazyStarted(cmd.Process.Pid)
	}
	return lp, nil
}

// lazyStartTimeout bounds the wait for the daemon to listen.
const lazyStartTimeout = 30 * time.Second

// canHold checks that this kernel lets ckpt hold the daemon's
// userfaultfds (pidfd_getfd, 5.6) and tell them apart (kcmp): without
// them a lazy restore is refused (ErrNotSupported), not run unguarded.
func (lp *lazyPages) canHold() error {
	if lp.pidfd < 0 {
		return fmt.Errorf("%w: lazy restore: no pidfd for the lazy-pages daemon", hypervisors.ErrNotSupported)
	}
	fd, err := unix.PidfdGetfd(lp.pidfd, 0, 0)
	if err != nil {
		return fmt.Errorf("%w: lazy restore: pidfd_getfd: %v", hypervisors.ErrNotSupported, err)
	}
	defer unix.Close(fd)
	if !lp.same(fd, lp.cmd.Process.Pid, 0) {
		return fmt.Errorf("%w: lazy restore: kcmp cannot compare the daemon's descriptors", hypervisors.ErrNotSupported)
	}
	return nil
}

func (lp *lazyPages) failure(err error) *CRIUError {
	return newCRIUError("lazy-pages", lp.id, filepath.Join(lp.work, "lazy-pages.log"), err)
}

// abort ends a daemon whose restore failed (or that did not start).
func (lp *lazyPages) abort() {
	unix.PidfdSendSignal(lp.pidfd, unix.SIGKILL, nil, 0)
	<-lp.done
	lp.release()
}

// watch holds the daemon's userfaultfds from now on (the restored tasks
// have sent theirs; a task forked later gets one too, taken within
// holdEvery) and returns what waits for the daemon: nil once every page
// is in, else kill's error joined to the daemon's, after kill. Should
// kill fail, the copies stay open (and leak): the tasks keep waiting
// rather than run on zeros.
func (lp *lazyPages) watch(kill func() error) func() error {
	lp.grab()
	go func() {
		t := time.NewTicker(holdEvery)
		defer t.Stop()
		for {
			select {
			case <-lp.done:
				return
			case <-t.C:
				lp.grab()
			}
		}
	}()
	return func() error {
		<-lp.done
		why := lp.err
		if why == nil && lp.pending() {
			why = errors.New("exit 0 with a fault still unanswered")
		}
		if why == nil {
			lp.release()
			return nil
		}
		// Kill before the copies are closed: closed, they would let
		// the tasks run on zeros.
		time.Sleep(lazyKillDelay)
		err := lp.failure(fmt.Errorf("the daemon ended (%v) before all pages were in: the container was killed rather than left to run on pages it never got back; its images are kept", why))
		if kerr := kill(); kerr != nil {
			lp.mu.Lock()
			lp.closed = true // keep the copies: better blocked than on zeros
			lp.mu.Unlock()
			return errors.Join(err, fmt.Errorf("and the container could not be killed, so ckpt keeps its userfaultfds open: its tasks wait; kill it yourself: %w", kerr))
		}
		lp.release()
		return err
	}
}

// pending says whether a held userfaultfd has a fault or an event
// nobody read.
func (lp *lazyPages) pending() bool {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	fds := make([]unix.PollFd, len(lp.held))
	for i, fd := range lp.held {
		fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// holdEvery is how often watch looks for new userfaultfds in the daemon.
const holdEvery = 20 * time.Millisecond

// grab takes a copy of each userfaultfd the daemon has that we do not hold.
func (lp *lazyPages) grab() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.closed {
		return
	}
	pid := lp.cmd.Process.Pid
	if unix.PidfdSendSignal(lp.pidfd, 0, nil, 0) != nil {
		return // it ended (and pid may be another process's now)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return
	}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n)); err != nil || l != uffdLink || lp.holds(pid, n) {
			continue
		}
		if fd, err := unix.PidfdGetfd(lp.pidfd, n, 0); err == nil {
			lp.held = append(lp.held, fd)
		}
	}
}

// holds says whether one of our copies is the daemon's fd their.
func (lp *lazyPages) holds(pid, their int) bool {
	for _, fd := range lp.held {
		if lp.same(fd, pid, their) {
			return true
		}
	}
	return false
}

// same says whether our fd and fd their of pid are one open file (kcmp).
func (lp *lazyPages) same(ours, pid, their int) bool {
	const kcmpFile = 0
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(pid), kcmpFile, uintptr(ours), uintptr(their), 0)
	return e == 0 && r == 0
}

// release closes our copies (and takes no more).
func (lp *lazyPages) release() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.closed = true
	for _, fd := range lp.held {
		unix.Close(fd)
	}
	lp.held = nil
	if lp.pidfd >= 0 {
		unix.Close(lp.pidfd)
		lp.pidfd = -1
	}
}
