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
	// away from a running container.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return nil, fmt.Errorf("criu lazy-pages: %w", err)
	}
	lp := &lazyPages{id: id, work: work, cmd: cmd, done: make(chan struct{}), pidfd: -1}
	go func() { lp.err = cmd.Wait(); close(lp.done) }()
	// CRIU writes one byte to --status-fd once its socket listens; EOF
	// means it ended first.
	if _, err := pr.Read(make([]byte, 1)); err != nil {
		<-lp.done
		return nil, lp.failure(fmt.Errorf("did not start: %v", lp.err))
	}
	if lazyStarted != nil {
		lazyStarted(cmd.Process.Pid)
	}
	return lp, nil
}

func (lp *lazyPages) failure(err error) *CRIUError {
	return newCRIUError("lazy-pages", lp.id, filepath.Join(lp.work, "lazy-pages.log"), err)
}

// abort ends a daemon whose restore failed.
func (lp *lazyPages) abort() {
	syscall.Kill(-lp.cmd.Process.Pid, syscall.SIGKILL)
	<-lp.done
	lp.release()
}

// watch holds the daemon's userfaultfds from now on (the restored tasks
// have sent theirs; a task forked later gets one too, taken within
// holdEvery) and returns what waits for the daemon: nil once every page
// is in, else kill's error joined to the daemon's, after kill.
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
		defer lp.release()
		if lp.err == nil {
			return nil
		}
		// Kill before the copies are closed: closed, they would let
		// the tasks run on zeros.
		time.Sleep(lazyKillDelay)
		kerr := kill()
		err := lp.failure(fmt.Errorf("the daemon ended (%v) before all pages were in: the container was killed rather than left to run on pages it never got back; its images are kept", lp.err))
		return errors.Join(err, kerr)
	}
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
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return // it ended
	}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, n)); err != nil || l != uffdLink || lp.holds(pid, n) {
			continue
		}
		if lp.pidfd < 0 {
			if lp.pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
				lp.pidfd = -1
				return
			}
		}
		if fd, err := unix.PidfdGetfd(lp.pidfd, n, 0); err == nil {
			lp.held = append(lp.held, fd)
		}
	}
}

// holds says whether one of our copies is the daemon's fd their (kcmp).
func (lp *lazyPages) holds(pid, their int) bool {
	const kcmpFile = 0
	for _, fd := range lp.held {
		r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(pid), kcmpFile, uintptr(fd), uintptr(their), 0)
		if e == 0 && r == 0 {
			return true
		}
	}
	return false
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
