package memregion

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Survival says which restarts of the host a region's contents outlive.
// The update paths ask it (a soft-reboot needs SoftReboot, a kexec Kexec,
// a firmware reboot Reboot) rather than looking at paths or kinds.
type Survival struct {
	// SoftReboot: systemctl soft-reboot restarts userspace alone. The
	// kernel goes on, so devices and disks stay, and so does /run; other
	// tmpfs mounts are unmounted with userspace.
	SoftReboot bool `json:"soft_reboot"`
	// Kexec: the next kernel keeps disks, and RAM only where the command
	// line reserves it (memmap= for a pmem device: KeepCmdline).
	Kexec bool `json:"kexec"`
	// Reboot: through the firmware, only disks are kept.
	Reboot bool `json:"reboot"`
	// KeepCmdline is what the next kernel's command line must keep for
	// the region to be there again ("memmap=" for a pmem device).
	KeepCmdline string `json:"keep_cmdline,omitempty"`
	// Medium says what holds the region, for messages ("tmpfs /run",
	// "pmem device pmem0", "ext4 on /dev/vda").
	Medium string `json:"medium"`
}

// Survives says what the region at path (formatted or not yet: then the
// nearest existing parent decides) outlives, from the mount table.
func Survives(path string) (Survival, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Survival{}, err
	}
	defer f.Close()
	abs, err := filepath.Abs(path)
	if err != nil {
		return Survival{}, err
	}
	// A region's device node: what the block device is, not /dev's tmpfs.
	// One that is not there (yet): its name is all there is. A link
	// (a udev alias) is named by what it points at.
	st, err := os.Stat(abs)
	if err == nil && st.Mode()&os.ModeDevice != 0 {
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		return deviceSurvival(filepath.Base(abs)), nil
	}
	if err != nil && filepath.Dir(abs) == "/dev" {
		return deviceSurvival(filepath.Base(abs)), nil
	}
	for {
		if _, err := os.Lstat(abs); err == nil || abs == "/" {
			break
		}
		abs = filepath.Dir(abs)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	return survives(f, abs)
}

// survives is Survives for a resolved path and a mountinfo table.
func survives(mountinfo io.Reader, abs string) (Survival, error) {
	m, ok, err := mountOf(mountinfo, abs)
	if err != nil {
		return Survival{}, err
	}
	if !ok {
		return Survival{}, fmt.Errorf("no mount holds %s", abs)
	}
	switch m.fstype {
	case "tmpfs", "ramfs":
		// /run is kept by systemd across a soft-reboot; other RAM
		// filesystems, a tmpfs mounted below /run too, are unmounted with
		// the old userspace (seen on Debian 13's systemd 257).
		return Survival{SoftReboot: m.point == "/run", Medium: m.fstype + " " + m.point}, nil
	}
	if dev := strings.TrimPrefix(m.source, "/dev/"); dev != m.source && strings.HasPrefix(dev, "pmem") {
		s := deviceSurvival(dev)
		s.Medium = m.fstype + " on " + s.Medium
		return s, nil
	}
	return Survival{SoftReboot: true, Kexec: true, Reboot: true, Medium: m.fstype + " on " + m.source}, nil
}

// deviceSurvival is what a block device (by its name) outlives: a pmem
// device from memmap= is RAM the next kernel keeps only when its command
// line reserves it again; a disk outlives everything.
func deviceSurvival(name string) Survival {
	switch {
	case strings.HasPrefix(name, "pmem"), strings.HasPrefix(name, "dax"):
		return Survival{SoftReboot: true, Kexec: true, KeepCmdline: "memmap=", Medium: "pmem device " + name}
	case strings.HasPrefix(name, "ram"), strings.HasPrefix(name, "zram"), strings.HasPrefix(name, "loop"):
		// RAM (or a file somewhere unknown): only the running kernel keeps it.
		return Survival{SoftReboot: true, Medium: "RAM device " + name}
	}
	return Survival{SoftReboot: true, Kexec: true, Reboot: true, Medium: "block device " + name}
}

type mount struct{ point, fstype, source string }

// mountOf finds the mount that holds abs: the last mounted of the longest
// mount points that contain it (mountinfo lists mounts in mount order).
func mountOf(r io.Reader, abs string) (mount, bool, error) {
	var best mount
	found := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point options [optional...] - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		point := unescapeMount(f[4])
		if !within(abs, point) || (found && len(point) < len(best.point)) {
			continue
		}
		best, found = mount{point: point, fstype: g[0], source: unescapeMount(g[1])}, true
	}
	return best, found, sc.Err()
}

func within(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}
