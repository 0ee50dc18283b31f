package criu

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tcpEstablished is the kernel's TCP_ESTABLISHED in /proc/net/tcp.
const tcpEstablished = "01"

// tcpConn is one established connection of a workload.
type tcpConn struct {
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// HostNet: the socket is in the host's network namespace (ckpt's
	// own), which a new kernel brings up by itself; a workload's private
	// namespace does not exist there until the restore.
	HostNet bool `json:"host_net,omitempty"`
}

// establishedTCP lists the established TCP connections held by the given
// processes (by socket inode, in each process's network namespace).
func establishedTCP(pids []int) ([]tcpConn, error) {
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
	hostNS, _ := os.Readlink("/proc/self/ns/net")
	var conns []tcpConn
	for ns, pid := range netns {
		for _, f := range []string{"tcp", "tcp6"} {
			c, err := readEstablished(filepath.Join("/proc", strconv.Itoa(pid), "net", f), inodes)
			if err != nil && !os.IsNotExist(err) {
				return nil, err
			}
			for i := range c {
				c[i].HostNet = ns == hostNS
			}
			conns = append(conns, c...)
		}
	}
	return conns, nil
}

// readEstablished returns the connections of a /proc/net/tcp{,6} table in
// state ESTABLISHED whose inode is in inodes.
func readEstablished(path string, inodes map[string]bool) ([]tcpConn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []tcpConn
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
		fs := strings.Fields(sc.Text())
		if len(fs) <= 9 || fs[3] != tcpEstablished || !inodes[fs[9]] {
			continue
		}
		l, err1 := parseProcAddr(fs[1])
		r, err2 := parseProcAddr(fs[2])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, tcpConn{Local: l, Remote: r})
	}
	return out, sc.Err()
}

// parseProcAddr parses /proc/net/tcp's "0100007F:1F90": the address in
// the kernel's byte order, 32 bits at a time, and the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(h) != 8 && len(h) != 32) {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad socket address %q", s)
	}
	for i := 0; i < len(raw); i += 4 { // each 32-bit word is little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
