package criu

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// tcpEstablished is the kernel's TCP_ESTABLISHED in /proc/net/tcp.
const tcpEstablished = "01"

// establishedTCP counts the established TCP connections held by the given
// processes (by socket inode, in each process's network namespace).
func establishedTCP(pids []int) (int, error) {
	inodes := map[string]bool{}
	netns := map[string]int{} // namespace → a pid in it
	for _, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue // exited
		}
		for _, fd := range fds {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := strings.CutPrefix(l, "socket:["); ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			netns[ns] = pid
		}
	}
	n := 0
	for _, pid := range netns {
		for _, f := range []string{"tcp", "tcp6"} {
			c, err := countEstablished(filepath.Join("/proc", strconv.Itoa(pid), "net", f), inodes)
			if err != nil && !os.IsNotExist(err) {
				return 0, err
			}
			n += c
		}
	}
	return n, nil
}

// countEstablished counts the lines of a /proc/net/tcp{,6} table in state
// ESTABLISHED whose inode is in inodes.
func countEstablished(path string, inodes map[string]bool) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
		fs := strings.Fields(sc.Text())
		if len(fs) > 9 && fs[3] == tcpEstablished && inodes[fs[9]] {
			n++
		}
	}
	return n, sc.Err()
}

// ended is a container its Dump ended (see Dump): Thaw restores it from
// img, Finish only removes what it left behind.
type ended struct {
	rec     recipe
	tree    *treeRecipe // set for a process tree
	img     string
	cleanup []string // staging dirs
}

type endedSet struct {
	mu sync.Mutex
	m  map[string]*ended
}

func (s *endedSet) put(id string, e *ended) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*ended{}
	}
	s.m[id] = e
}

func (s *endedSet) take(id string) *ended {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[id]
	delete(s.m, id)
	return e
}

func (e *ended) remove() {
	for _, d := range e.cleanup {
		os.RemoveAll(d)
	}
}
