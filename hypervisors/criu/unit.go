package criu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A process tree whose cgroup is a systemd service stays systemd's:
//
//   - Finish masks the unit for this boot (systemctl mask --runtime) before
//     it ends the tree, so that Restart= does not start it afresh between
//     the commit and the kexec.
//   - In the new boot, PrepareBoot holds the unit back (a runtime drop-in
//     with a condition that fails), so that systemd does not start it
//     afresh at boot either.
//   - Restore has systemd start the unit, with a runtime drop-in whose
//     ExecStart is CRIU's restore of the tree (Type=forking, the restored
//     root as PIDFile). systemd then knows the restored processes as the
//     running service: systemctl is-active, stop and restart work.
//
// The drop-ins live in /run/systemd/system, so a reboot forgets them.

// systemdRun is where systemd keeps runtime units and drop-ins.
const systemdRun = "/run/systemd/system"

// unitHoldDir holds the files the hold drop-in's condition looks for.
const unitHoldDir = "/run/ckpt/units"

// systemdUnit returns the service whose cgroup is path, or "" when systemd
// does not manage the host or the cgroup is no service's.
func (r *Runtime) systemdUnit(ctx context.Context, path string) string {
	name := filepath.Base(path)
	if _, err := os.Stat(systemdRun); err != nil || !strings.HasSuffix(name, ".service") {
		return ""
	}
	out, err := exec.CommandContext(ctx, "systemctl", "show", "--property=ControlGroup", "--value", name).Output()
	if err != nil || strings.TrimSpace(string(out)) != path {
		return ""
	}
	return name
}

func systemctl(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func dropIn(unit, name string) string {
	return filepath.Join(systemdRun, unit+".d", name)
}

func writeDropIn(unit, name, body string) error {
	p := dropIn(unit, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(body), 0o644)
}

// holdUnit keeps systemd from starting unit until the restore does.
func holdUnit(ctx context.Context, unit string) error {
	body := fmt.Sprintf(`# Written by ckpt at boot: %[1]s's processes come back from a checkpoint
# (ckpt resume-all), so systemd must not start it afresh meanwhile. To give
# up on the checkpoint and start it afresh: rm this file, systemctl
# daemon-reload, systemctl start %[1]s.
[Unit]
ConditionPathExists=%[2]s
`, unit, filepath.Join(unitHoldDir, unit+".restoring"))
	if err := writeDropIn(unit, "50-ckpt-hold.conf", body); err != nil {
		return err
	}
	return systemctl(ctx, "daemon-reload")
}

// maskUnit keeps systemd from restarting unit for the rest of this boot.
func maskUnit(ctx context.Context, unit string) error {
	return systemctl(ctx, "mask", "--runtime", "--quiet", unit)
}

// restoreUnit has systemd start unit with CRIU's restore of the tree as
// its ExecStart (criuArgs, after "restore").
func (r *Runtime) restoreUnit(ctx context.Context, unit, work string, criuArgs []string) error {
	if err := os.MkdirAll(unitHoldDir, 0o700); err != nil {
		return err
	}
	flag := filepath.Join(unitHoldDir, unit+".restoring")
	pidFile := filepath.Join(work, "restored.pid")
	quoted := make([]string, len(criuArgs))
	for i, a := range criuArgs {
		quoted[i] = systemdQuote(a)
	}
	// "+": CRIU runs with full privileges whatever User= or sandboxing the
	// service has; the restored processes get theirs back from the images.
	body := fmt.Sprintf(`# Written by ckpt resume-all while it restores %s from a checkpoint.
[Service]
Type=forking
PIDFile=%s
ExecCondition=
ExecStartPre=
ExecStartPost=
ExecStart=
ExecStart=+%s restore --restore-detached --pidfile %s %s
TimeoutStartSec=30min
`, unit, pidFile, systemdQuote(r.cfg.CRIU), systemdQuote(pidFile), strings.Join(quoted, " "))
	if err := writeDropIn(unit, "60-ckpt-restore.conf", body); err != nil {
		return err
	}
	defer func() {
		os.Remove(dropIn(unit, "60-ckpt-restore.conf"))
		systemctl(context.WithoutCancel(ctx), "daemon-reload")
	}()
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		return err
	}
	defer os.Remove(flag)
	// Masked by Finish when the restore runs in the same boot.
	systemctl(ctx, "unmask", "--runtime", "--quiet", unit)
	if err := systemctl(ctx, "daemon-reload"); err != nil {
		return err
	}
	if err := systemctl(ctx, "start", unit); err != nil {
		return err
	}
	os.Remove(dropIn(unit, "50-ckpt-hold.conf"))
	return nil
}

// systemdQuote quotes s for an Exec*= line.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;$%") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `$$`, `%`, `%%`)
	return `"` + r.Replace(s) + `"`
}
