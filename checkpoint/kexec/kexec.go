// Package kexec loads a kernel for kexec with kexec_file_load, unloads it,
// and reboots into it.
//
// Only kexec_file_load is used: the kernel places the segments itself, in
// System RAM, so they never land inside a memmap=SIZE!OFFSET reservation.
// The older kexec_load let userspace choose, and in our tests it put the
// initrd inside the preserved region and corrupted it.
package kexec

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Error is a failed kexec system call with its errno and a hint.
type Error struct {
	Op    string // "load", "unload", "exec"
	Errno syscall.Errno
	Hint  string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("kexec %s: %v", e.Op, e.Errno)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Errno }

func newError(op string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("kexec %s: %w", op, err)
	}
	e := &Error{Op: op, Errno: errno}
	switch errno {
	case unix.EPERM:
		e.Hint = "needs CAP_SYS_BOOT; kernel lockdown or kexec_load_disabled also refuse it"
	case unix.ENOSYS:
		e.Hint = "kernel built without CONFIG_KEXEC_FILE"
	case unix.EKEYREJECTED, unix.EBADMSG, unix.ENOKEY:
		e.Hint = "the kernel requires a signed image (secure boot or KEXEC_SIG_FORCE)"
	case unix.ENOEXEC:
		e.Hint = "not a bzImage this kernel can load"
	case unix.EBUSY:
		e.Hint = "another kexec load is in progress"
	}
	return e
}

// Image is the kernel to load.
type Image struct {
	Kernel  string // path of the bzImage (vmlinuz)
	Initrd  string // path of the initramfs; empty for none
	Cmdline string // the complete command line of the next kernel
}

// Load loads img for a later Exec, replacing any kernel loaded before.
func Load(img Image) error {
	k, err := os.Open(img.Kernel)
	if err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	defer k.Close()
	initrd, flags := -1, 0
	if img.Initrd == "" {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
	} else {
		f, err := os.Open(img.Initrd)
		if err != nil {
			return fmt.Errorf("kexec load: %w", err)
		}
		defer f.Close()
		initrd = int(f.Fd())
	}
	if err := unix.KexecFileLoad(int(k.Fd()), initrd, img.Cmdline, flags); err != nil {
		return newError("load", err)
	}
	return nil
}

// Unload drops a loaded kernel (kexec -u), so a deliberate reboot is a
// cold one.
func Unload() error {
	if err := unix.KexecFileLoad(-1, -1, "", unix.KEXEC_FILE_UNLOAD); err != nil {
		return newError("unload", err)
	}
	return nil
}

// Loaded reports whether a kernel is loaded for kexec.
func Loaded() (bool, error) {
	b, err := os.ReadFile("/sys/kernel/kexec_loaded")
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Exec syncs filesystems and reboots into the loaded kernel. On success it
// does not return. Callers must have made their data durable (fsync) first.
func Exec() error {
	if ok, err := Loaded(); err == nil && !ok {
		return &Error{Op: "exec", Errno: unix.ENOENT, Hint: "no kernel is loaded"}
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
		return newError("exec", err)
	}
	return nil
}

// Boot hands the host over to the loaded kernel as its init system would.
// Where systemd runs the host, "systemctl kexec" stops the services and
// unmounts the filesystems first, and systemd-shutdown then kexecs into
// the kernel loaded already (with kexec_file_load: systemd loads none of
// its own when one is loaded). It returns once the shutdown is under way.
// Elsewhere (an initramfs, a host without systemd) it is Exec. Shutdown
// inhibitors are ignored: the workloads are committed and ended, and the
// kexec is what brings them back.
func Boot() error {
	if ok, err := Loaded(); err == nil && !ok {
		return &Error{Op: "exec", Errno: unix.ENOENT, Hint: "no kernel is loaded"}
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		unix.Sync()
		out, err := exec.Command("systemctl", "--ignore-inhibitors", "kexec").CombinedOutput()
		if err == nil {
			return nil
		}
		slog.Warn("systemctl kexec failed; kexec without a clean shutdown", "err", err, "output", strings.TrimSpace(string(out)))
	}
	return Exec()
}

// Fallback is what to do where kexec cannot be used: the same suspend,
// then a full reboot instead of a kexec.
const Fallback = "fall back to a full reboot: format a region on disk (ckpt region format /var/lib/ckpt/region --kind dir), " +
	"run ckpt suspend-all --no-kexec --region /var/lib/ckpt/region, reboot, and let ckpt-resume.service run resume-all at boot"

// Check reports, without loading anything, whether this kernel lets us
// kexec_file_load at all: nil, or why not.
func Check() error {
	if _, err := os.Stat("/sys/kernel/kexec_loaded"); err != nil {
		return errors.New("this kernel has no kexec (built without CONFIG_KEXEC_FILE: no /sys/kernel/kexec_loaded)")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/kexec_load_disabled"); err == nil && strings.TrimSpace(string(b)) == "1" {
		return errors.New("kexec is disabled until the next boot (sysctl kernel.kexec_load_disabled=1)")
	}
	return nil
}

// Lockdown is the kernel's lockdown mode ("none", "integrity",
// "confidentiality"), or "" where the kernel does not say. Under lockdown
// kexec_file_load accepts only kernels signed with a key the kernel
// trusts.
func Lockdown() string {
	b, err := os.ReadFile("/sys/kernel/security/lockdown")
	if err != nil {
		return ""
	}
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "[") {
			return strings.Trim(f, "[]")
		}
	}
	return ""
}
