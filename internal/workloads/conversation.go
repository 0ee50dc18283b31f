package workloads

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Conversation is one TCP connection to testload kept open throughout a
// suspend: it must come back established.
type Conversation struct {
	conn net.Conn
	r    *bufio.Reader
}

// Converse connects to testload at addr; the connection is closed at
// cleanup.
func Converse(t testing.TB, addr string) *Conversation {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Conversation{conn: conn, r: bufio.NewReader(conn)}
}

// Send sends one line.
func (c *Conversation) Send(t testing.TB, line string) {
	t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c.conn, line); err != nil {
		t.Fatalf("send %q: %v", line, err)
	}
}

// Expect reads one answer; TCP retransmits whatever was sent while the
// workload was down, so the answer may take a few seconds.
func (c *Conversation) Expect(t testing.TB, want string) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := c.r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != want {
		t.Fatalf("on the established connection: got %q, %v; want %q", got, err, want)
	}
}
