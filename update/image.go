package update

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
)

// Target is the kernel to update into: version ("6.12.95+deb12-amd64", or
// a vmlinuz path), or else the bootloader's default (DefaultKernel), or,
// on a host without GRUB or systemd-boot configuration, the newest kernel
// in /boot. The image keeps the running command line (and so memmap=).
func Target(version string) (Kernel, kexec.Image, error) {
	var k Kernel
	switch {
	case version == "":
		var err error
		k, err = DefaultKernel("/")
		if errors.Is(err, ErrNoBootloader) {
			k, err = newestInBoot()
		}
		if err != nil {
			return k, kexec.Image{}, err
		}
	case strings.Contains(version, "/"): // a path: its initrd beside it
		v := strings.TrimPrefix(filepath.Base(version), "vmlinuz-")
		k = Kernel{Version: v, Kernel: version, Initrd: filepath.Join(filepath.Dir(version), "initrd.img-"+v), Source: "given as a path"}
	default:
		k = Kernel{Version: version, Kernel: "/boot/vmlinuz-" + version, Initrd: "/boot/initrd.img-" + version, Source: "given on the command line"}
	}
	img := kexec.Image{Kernel: k.Kernel, Initrd: k.Initrd}
	// Whether the kernel exists is the plan's check (checkpoint.NewPlan).
	if _, err := os.Stat(img.Initrd); err != nil {
		img.Initrd = ""
	}
	cur, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return k, img, err
	}
	img.Cmdline = strings.TrimSpace(string(cur)) // keeps memmap=
	return k, img, nil
}

func newestInBoot() (Kernel, error) {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	if len(ks) == 0 {
		return Kernel{}, errors.New("no kernel in /boot to kexec into (name one with --kernel, or use --no-kexec)")
	}
	sort.Slice(ks, func(i, j int) bool { return VersionLess(ks[i], ks[j]) })
	v := strings.TrimPrefix(filepath.Base(ks[len(ks)-1]), "vmlinuz-")
	return Kernel{Version: v, Kernel: ks[len(ks)-1], Initrd: "/boot/initrd.img-" + v, Source: "the newest in /boot (no bootloader configuration)"}, nil
}
