package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
)

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string // e.g. "GenericError", "CommandNotFound", "DeviceNotActive"
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Monitor is one QMP connection. It implements go-qemu's qmp.Monitor so
// go-qemu's typed layers can use it, and adds what go-qemu's SocketMonitor
// leaves out: the error class, the peer's pid (SO_PEERCRED) and a context
// on every command. QMP serves one client per socket, so a backend keeps
// one Monitor per VM from discovery to suspend.
type Monitor struct {
	Path    string
	Version qmp.Version
	PID     int // QEMU's pid, from the socket's peer credentials

	conn *net.UnixConn
	mu   sync.Mutex // one command at a time
	seq  uint64     // the id of the last command (under mu)
	resp chan []byte
	done chan struct{}
	err  error // set before done is closed

	evMu   sync.Mutex
	events chan qmp.Event
}

var _ qmp.Monitor = (*Monitor)(nil)

// Dial connects to a QMP socket and completes the capabilities handshake.
func Dial(ctx context.Context, path string) (*Monitor, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	m := &Monitor{Path: path, conn: c.(*net.UnixConn), resp: make(chan []byte, answersQueued), done: make(chan struct{})}
	if err := m.handshake(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, err)
	}
	return m, nil
}

func (m *Monitor) handshake(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		m.conn.SetDeadline(dl)
	} else {
		m.conn.SetDeadline(time.Now().Add(10 * time.Second)) // a busy socket never greets
	}
	defer m.conn.SetDeadline(time.Time{})
	if raw, err := m.conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				m.PID = int(cred.Pid)
			}
		})
	}
	r := bufio.NewReaderSize(m.conn, 64<<10)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("no greeting (another client connected?): %w", err)
	}
	var greet struct {
		QMP struct {
			Version qmp.Version `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	m.Version = greet.QMP.Version
	go m.read(r)
	_, err = m.run(ctx, "qmp_capabilities", nil, nil)
	return err
}

// read dispatches answers to the running command and events to Events.
func (m *Monitor) read(r *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			m.err = err
			m.evMu.Lock()
			if m.events != nil {
				close(m.events)
				m.events = nil
			}
			m.evMu.Unlock()
			return
		}
		var probe struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(line, &probe) == nil && probe.Event != "" {
			var ev qmp.Event
			if json.Unmarshal(line, &ev) == nil {
				m.evMu.Lock()
				if m.events != nil {
					select {
					case m.events <- ev:
					default: // nobody reads fast enough: drop
					}
				}
				m.evMu.Unlock()
			}
			continue
		}
		select {
		case m.resp <- line:
		default: // only stale answers queued (see run): drop
		}
	}
}

// answersQueued bounds the answers the reader holds for run: the current
// command's and those of commands a cancel gave up on, which run drops.
const answersQueued = 8

// command is a QMP command with the id its answer carries back.
type command struct {
	Execute string `json:"execute"`
	Args    any    `json:"arguments,omitempty"`
	ID      uint64 `json:"id"`
}

// Execute runs a command with arguments and decodes its "return" into out
// (nil: ignore it).
func (m *Monitor) Execute(ctx context.Context, cmd string, args any, out any) error {
	ret, err := m.run(ctx, cmd, args, nil)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(ret, out); err != nil {
		return fmt.Errorf("qmp %s: decoding answer: %w", cmd, err)
	}
	return nil
}

// ExecuteWithFile passes f with SCM_RIGHTS along with the command (getfd,
// add-fd).
func (m *Monitor) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File) error {
	_, err := m.run(ctx, cmd, args, f)
	return err
}

func (m *Monitor) run(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	id := m.seq
	b, err := json.Marshal(command{Execute: cmd, Args: args, ID: id})
	if err != nil {
		return nil, err
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := m.conn.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	// The answer carries the command's id. A cancel below leaves the
	// connection as it is: the answer it gave up on still comes, and the
	// next command drops it by its id. (Closing the connection instead
	// made every cancelled dump reconnect for the rollback's thaw.)
	var line []byte
	for line == nil {
		select {
		case line = <-m.resp:
			var tag struct {
				ID *uint64 `json:"id"`
			}
			if json.Unmarshal(line, &tag) == nil && tag.ID != nil && *tag.ID != id {
				line = nil // a cancelled command's answer
			}
		case <-m.done:
			return nil, fmt.Errorf("qmp %s: connection closed: %v", cmd, m.err)
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
		}
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("qmp %s: bad answer %q: %w", cmd, line, err)
	}
	if r.Error != nil {
		return nil, &QMPError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	return r.Return, nil
}

// Close ends the connection.
func (m *Monitor) Close() error { return m.conn.Close() }

// Connect implements qmp.Monitor (Dial already connected).
func (m *Monitor) Connect() error { return nil }

// Disconnect implements qmp.Monitor.
func (m *Monitor) Disconnect() error { return m.Close() }

// Run implements qmp.Monitor: a raw JSON command, its raw JSON answer.
func (m *Monitor) Run(raw []byte) ([]byte, error) {
	var c qmp.Command
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	ret, err := m.run(context.Background(), c.Execute, c.Args, nil)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]json.RawMessage{"return": ret})
}

// Events implements qmp.Monitor.
func (m *Monitor) Events(context.Context) (<-chan qmp.Event, error) {
	m.evMu.Lock()
	defer m.evMu.Unlock()
	if m.events != nil {
		return nil, errors.New("qmp: events already consumed")
	}
	m.events = make(chan qmp.Event, 64)
	return m.events, nil
}
