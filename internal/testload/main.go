// Command testload is the workload ckpt's tests suspend and resume. It
// holds pseudo-random anonymous memory, counts ticks, keeps a child
// process, and answers a line protocol on a TCP port:
//
//	tick   → "tick N"           (N grows every -tick while it runs)
//	sum    → "sum OK <crc>" or "sum BAD <n> of <pages> pages" (every 4 KiB
//	         page checked against the checksum of what was last written)
//	written → "written N pages" (page rewrites so far, with -dirty)
//	child  → "child <pid> alive|dead"
//	echo X → "X"
//
// A connection stays open for as many lines as the client sends, so a
// test can keep one established across a suspend.
//
// "testload -supervise CMD ARGS…" instead runs CMD as a service manager
// would: as a child subreaper that reaps every orphan at once, so the pids
// of a killed process tree are free again for CRIU to restore it.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-supervise" {
		supervise(os.Args[2:])
		return
	}
	memMiB := flag.Int("mem", 64, "MiB of pseudo-random anonymous memory to hold")
	listen := flag.String("listen", "127.0.0.1:0", "TCP address to serve on")
	tick := flag.Duration("tick", 100*time.Millisecond, "counter period")
	childCmd := flag.String("child", "/bin/sh -c 'while :; do sleep 1; done'", "child process (empty: none)")
	guest := flag.Bool("guest", false, "run as a VM's init: mount /dev, print to the serial console")
	sumEvery := flag.Duration("sum-every", 0, "also print \"sum OK|BAD\" this often (0: never)")
	dirty := flag.Int("dirty", 0, "MiB/s of the memory to keep rewriting, at random pages (0: none)")
	hot := flag.Int("hot", 0, "rewrite only pages within the first this many MiB (0: anywhere)")
	lockPath := flag.String("flock", "", "hold an exclusive flock on this file (\"held\" reports it)")
	linked := flag.String("unlinked", "", "hold this file open after unlinking it while a hard link to it stays (\"held\" reads it)")
	flag.Parse()
	held := holdFiles(*lockPath, *linked)
	if *guest {
		guestInit()
	}

	buf := make([]byte, *memMiB<<20)
	rand.NewChaCha8([32]byte{'c', 'k', 'p', 't'}).Read(buf)
	mem := newMemory(buf)
	if *dirty > 0 {
		go mem.keepWriting(*dirty, *hot)
	}

	var child *exec.Cmd
	if *childCmd != "" {
		child = exec.Command("/bin/sh", "-c", "exec "+*childCmd)
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
	}
	var ticks atomic.Int64
	go func() {
		for range time.Tick(*tick) {
			n := ticks.Add(1)
			fmt.Printf("tick %d\n", n)
		}
	}()
	sum := mem.check
	if *sumEvery > 0 {
		go func() {
			for range time.Tick(*sumEvery) {
				fmt.Println(sum())
			}
		}()
	}
	if *listen == "" {
		fmt.Printf("ready mem=%dMiB %s\n", *memMiB, mem.check())
		select {}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Printf("ready %s mem=%dMiB %s\n", ln.Addr(), *memMiB, mem.check())
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go serve(c, func(cmd string) string {
			switch {
			case cmd == "tick":
				return fmt.Sprintf("tick %d", ticks.Load())
			case cmd == "sum":
				return sum()
			case cmd == "written":
				mem.mu.Lock()
				defer mem.mu.Unlock()
				return fmt.Sprintf("written %d pages", mem.gen)
			case cmd == "child":
				if child == nil {
					return "child 0 dead"
				}
				state := "alive"
				if syscall.Kill(child.Process.Pid, 0) != nil {
					state = "dead"
				}
				return fmt.Sprintf("child %d %s", child.Process.Pid, state)
			case cmd == "held":
				return held()
			case strings.HasPrefix(cmd, "echo "):
				return strings.TrimPrefix(cmd, "echo ")
			}
			return "unknown " + cmd
		})
	}
}

// memory is the workload's anonymous memory with a CRC-32C per 4 KiB page,
// kept up to date as pages are rewritten, so a check finds any page whose
// content does not match what the process last wrote (a page lost or left
// stale by a restore, or by a pre-dump whose later changes were missed).
type memory struct {
	mu    sync.Mutex
	buf   []byte
	sums  []uint32
	table *crc32.Table
	gen   uint64
}

const pageSize = 4096

func newMemory(buf []byte) *memory {
	m := &memory{buf: buf, sums: make([]uint32, len(buf)/pageSize), table: crc32.MakeTable(crc32.Castagnoli)}
	for i := range m.sums {
		m.sums[i] = crc32.Checksum(m.page(i), m.table)
	}
	return m
}

func (m *memory) page(i int) []byte { return m.buf[i*pageSize : (i+1)*pageSize] }

// keepWriting rewrites mibPerSec MiB of random pages every second, in
// 10 ms batches, within the first hotMiB (0: anywhere): each rewrite
// stamps a new generation into the page.
func (m *memory) keepWriting(mibPerSec, hotMiB int) {
	pages := len(m.sums)
	if hotMiB > 0 {
		pages = min(pages, hotMiB<<20/pageSize)
	}
	if pages == 0 {
		return
	}
	rng := rand.New(rand.NewPCG(1, 2))
	perBatch := max(1, mibPerSec<<20/pageSize/100)
	for range time.Tick(10 * time.Millisecond) {
		m.mu.Lock()
		for range perBatch {
			m.gen++
			i := rng.IntN(pages)
			p := m.page(i)
			for off := 0; off < pageSize; off += 512 {
				binary.LittleEndian.PutUint64(p[off:], m.gen)
			}
			m.sums[i] = crc32.Checksum(p, m.table)
		}
		m.mu.Unlock()
	}
}

// check recomputes every page: "sum OK <crc of the page sums>" or "sum BAD
// <bad pages> of <pages>".
func (m *memory) check() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	bad := 0
	for i, want := range m.sums {
		if crc32.Checksum(m.page(i), m.table) != want {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Sprintf("sum BAD %d of %d pages", bad, len(m.sums))
	}
	all := crc32.New(m.table)
	binary.Write(all, binary.LittleEndian, m.sums)
	return fmt.Sprintf("sum OK %08x", all.Sum32())
}

func serve(c net.Conn, answer func(string) string) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintln(c, answer(strings.TrimSpace(sc.Text()))); err != nil {
			return
		}
	}
}

func supervise(args []string) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "subreaper:", err)
		os.Exit(1)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
		os.Exit(1)
	}
	for {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &ws, 0, nil); err == syscall.ECHILD {
			time.Sleep(100 * time.Millisecond) // nothing left; the test kills us
		}
	}
}

// guestInit makes testload a VM's /init: devtmpfs on /dev and stdout on
// the first serial port.
func guestInit() {
	os.MkdirAll("/dev", 0o755)
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil && err != unix.EBUSY {
		fmt.Fprintln(os.Stderr, "mount /dev:", err)
	}
	tty, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	unix.Dup2(int(tty.Fd()), 1)
	unix.Dup2(int(tty.Fd()), 2)
}

// holdFiles sets up the files CRIU needs options for: a held flock
// (--file-locks) and an open file whose name is gone while another hard
// link to it stays (--link-remap). The returned func reports them.
func holdFiles(lockPath, linked string) func() string {
	var lockF, linkF *os.File
	if lockPath != "" {
		f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "flock:", err)
			os.Exit(1)
		}
		lockF = f
	}
	if linked != "" {
		err := os.WriteFile(linked, []byte("kept\n"), 0o600)
		if err == nil {
			err = os.Link(linked, linked+".link")
		}
		if err == nil {
			linkF, err = os.Open(linked)
		}
		if err == nil {
			err = os.Remove(linked)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "unlinked:", err)
			os.Exit(1)
		}
	}
	return func() string {
		out := "held"
		if lockF != nil {
			// A second open file description must not get the lock.
			f, err := os.Open(lockF.Name())
			if err != nil {
				return "flock " + err.Error()
			}
			defer f.Close()
			if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
				return "flock lost"
			}
			out += " flock"
		}
		if linkF != nil {
			b := make([]byte, 5)
			if n, err := linkF.ReadAt(b, 0); err != nil || string(b[:n]) != "kept\n" {
				return fmt.Sprintf("unlinked file reads %q, %v", b[:n], err)
			}
			out += " unlinked"
		}
		return out
	}
}
