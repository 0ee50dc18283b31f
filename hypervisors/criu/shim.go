package criu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// startLogShim starts the reader of a restored workload's stdout and
// stderr, as a container shim or conmon would be: a process apart from
// ckpt that appends what comes down a new pipe to logPath until the last
// writer is gone. It returns the pipe's write end for the restore to give
// the workload. So the restored workload has its stdio on pipes again, and
// the next suspend can dump it as it dumped the original (a host file
// there CRIU cannot restore in a container).
//
// Where systemd runs the host, the reader gets a scope of its own
// (systemd-run --scope), so that it outlives the unit that ran ckpt.
func startLogShim(ctx context.Context, name, logPath string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	argv := []string{"/bin/sh", "-c", `exec cat >>"$0"`, logPath}
	if _, err := os.Stat(systemdRun); err == nil {
		if sr, err := exec.LookPath("systemd-run"); err == nil {
			unit := fmt.Sprintf("%s-%s.scope", name, strconv.FormatInt(time.Now().UnixNano(), 36))
			argv = append([]string{sr, "--scope", "--quiet", "--collect", "--unit", unit,
				"--description", "ckpt: log of a restored workload"}, argv...)
		}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = pr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("log reader for %s: %w", logPath, err)
	}
	go cmd.Wait() // reap it if it ends while ckpt runs
	return pw, nil
}
