// Command testload is the workload ckpt's tests suspend and resume. It
// holds pseudo-random anonymous memory, counts ticks, keeps a child
// process, and answers a line protocol on a TCP port:
//
//	tick   → "tick N"           (N grows every -tick while it runs)
//	sum    → "sum OK <crc>" or "sum BAD <crc> <want>" (memory recomputed)
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
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
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
	flag.Parse()
	if *guest {
		guestInit()
	}

	buf := make([]byte, *memMiB<<20)
	rand.NewChaCha8([32]byte{'c', 'k', 'p', 't'}).Read(buf)
	table := crc32.MakeTable(crc32.Castagnoli)
	want := crc32.Checksum(buf, table)

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
	sum := func() string {
		got := crc32.Checksum(buf, table)
		if got == want {
			return fmt.Sprintf("sum OK %08x", got)
		}
		return fmt.Sprintf("sum BAD %08x %08x", got, want)
	}
	if *sumEvery > 0 {
		go func() {
			for range time.Tick(*sumEvery) {
				fmt.Println(sum())
			}
		}()
	}
	if *listen == "" {
		fmt.Printf("ready mem=%dMiB crc=%08x\n", *memMiB, want)
		select {}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Printf("ready %s mem=%dMiB crc=%08x\n", ln.Addr(), *memMiB, want)
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
			case cmd == "child":
				if child == nil {
					return "child 0 dead"
				}
				state := "alive"
				if syscall.Kill(child.Process.Pid, 0) != nil {
					state = "dead"
				}
				return fmt.Sprintf("child %d %s", child.Process.Pid, state)
			case strings.HasPrefix(cmd, "echo "):
				return strings.TrimPrefix(cmd, "echo ")
			}
			return "unknown " + cmd
		})
	}
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
