package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// qga talks to qemu-guest-agent in a guest through QEMU's chardev socket.
// Each call connects anew and resynchronises (guest-sync-delimited): the
// agent restarts with every boot of the guest, a kexec included, and
// whatever an earlier agent left in the channel is skipped.
type qga struct{ socket string }

type qgaError struct {
	Class, Desc string
}

func (e *qgaError) Error() string { return "guest agent: " + e.Class + ": " + e.Desc }

// call runs one command and decodes its "return" into out (may be nil).
func (q qga) call(ctx context.Context, cmd string, args, out any) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", q.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	rd := bufio.NewReader(c)
	id := rand.Int64N(1 << 40)
	// The answer to the sync starts with 0xFF, which marks where to
	// start reading.
	sync, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]any{"id": id}})
	if _, err := c.Write(append(sync, '\n')); err != nil {
		return err
	}
	for {
		if _, err := rd.ReadBytes(0xff); err != nil {
			return fmt.Errorf("guest agent sync: %w", err)
		}
		line, err := rd.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("guest agent sync: %w", err)
		}
		var r struct{ Return int64 }
		if json.Unmarshal(line, &r) == nil && r.Return == id {
			break
		}
	}
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err
	}
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("guest agent %s: %w", cmd, err)
		}
		line = bytes.TrimLeft(line, "\xff")
		var r struct {
			Return json.RawMessage
			Error  *struct{ Class, Desc string }
		}
		if err := json.Unmarshal(line, &r); err != nil {
			continue // noise from an earlier agent
		}
		if r.Error != nil {
			return &qgaError{r.Error.Class, r.Error.Desc}
		}
		if out == nil || r.Return == nil {
			return nil
		}
		return json.Unmarshal(r.Return, out)
	}
}

// ping succeeds once an agent answers.
func (q qga) ping(ctx context.Context) error { return q.call(ctx, "guest-ping", nil, nil) }

// execResult is a finished guest-exec.
type execResult struct {
	Exit           int
	Stdout, Stderr string
}

// exec runs a shell command in the guest and waits for it.
func (q qga) exec(ctx context.Context, script string) (execResult, error) {
	pid, err := q.start(ctx, script)
	if err != nil {
		return execResult{}, err
	}
	return q.wait(ctx, pid)
}

// start runs a shell command in the guest without waiting.
func (q qga) start(ctx context.Context, script string) (int, error) {
	var r struct{ PID int }
	err := q.call(ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", script}, "capture-output": true}, &r)
	return r.PID, err
}

// wait polls guest-exec-status until pid exits. A poll that gets no
// answer is tried again (it changes nothing) until ctx ends: under TCG a
// busy guest can leave its agent silent for a while.
func (q qga) wait(ctx context.Context, pid int) (execResult, error) {
	var lastErr error
	for {
		var st struct {
			Exited   bool
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := q.call(pctx, "guest-exec-status", map[string]any{"pid": pid}, &st)
		cancel()
		var qe *qgaError
		switch {
		case errors.As(err, &qe):
			return execResult{}, err
		case err != nil:
			lastErr = err
		case st.Exited:
			o, _ := base64.StdEncoding.DecodeString(st.Out)
			e, _ := base64.StdEncoding.DecodeString(st.Err)
			res := execResult{Exit: st.ExitCode, Stdout: string(o), Stderr: string(e)}
			if st.Signal != 0 {
				res.Exit = 128 + st.Signal
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return execResult{}, errors.Join(ctx.Err(), fmt.Errorf("guest pid %d still running", pid), lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
