package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestCancelKeepsMonitorInStep: a command given up on (its ctx cancelled
// before the answer) leaves the connection open, and the next command
// gets its own answer, not the late one. A fake QMP server answers the
// first command late.
func TestCancelKeepsMonitorInStep(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	release := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}`)
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
				return
			}
			if cmd.Execute == "slow" {
				<-release // answered only once the next command was sent
			}
			fmt.Fprintf(c, `{"return": {"name": %q}, "id": %s}`+"\n", cmd.Execute, cmd.ID)
			if cmd.Execute == "slow" {
				fmt.Fprintln(c, `{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}`)
			}
		}
	}()
	m, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := m.Execute(ctx, "slow", nil, nil); err == nil {
		t.Fatal("slow: answered despite the cancel")
	}
	time.AfterFunc(20*time.Millisecond, func() { close(release) })
	var got struct {
		Name string `json:"name"`
	}
	if err := m.Execute(context.Background(), "query-name", nil, &got); err != nil {
		t.Fatalf("the command after a cancelled one: %v", err)
	}
	if got.Name != "query-name" {
		t.Fatalf("the command after a cancelled one got the answer to %q", got.Name)
	}
}
