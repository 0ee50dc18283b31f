package update

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDefaultKernel reads the bootloader's default the way GRUB and
// systemd-boot choose it, from a Debian 12 grub.cfg (GRUB_DEFAULT=0, the
// top entry), an Ubuntu one (/boot its own filesystem, GRUB_DEFAULT=saved
// with a submenu path of ids in grubenv, a microcode initrd first) and a
// systemd-boot ESP (a glob default).
func TestDefaultKernel(t *testing.T) {
	for _, tc := range []struct {
		root, version, kernel, initrd, source string
	}{
		{"debian12", "6.12.95+deb12-amd64", "/boot/vmlinuz-6.12.95+deb12-amd64", "/boot/initrd.img-6.12.95+deb12-amd64", "GRUB_DEFAULT=0"},
		{"ubuntu", "6.8.0-49-generic", "/boot/vmlinuz-6.8.0-49-generic", "/boot/initrd.img-6.8.0-49-generic", "saved_entry=gnulinux-advanced"},
		{"sdboot", "6.1.0-56-amd64", "testdata/sdboot/boot/efi/0123/6.1.0-56-amd64/linux", "testdata/sdboot/boot/efi/0123/6.1.0-56-amd64/initrd.img-6.1.0-56-amd64", "loader.conf default debian-6.1.0*"},
	} {
		t.Run(tc.root, func(t *testing.T) {
			k, err := DefaultKernel(filepath.Join("testdata", tc.root))
			if err != nil {
				t.Fatal(err)
			}
			if k.Version != tc.version || k.Kernel != tc.kernel || k.Initrd != tc.initrd || !strings.Contains(k.Source, tc.source) {
				t.Fatalf("got %+v\nwant version %s kernel %s initrd %s, source with %q", k, tc.version, tc.kernel, tc.initrd, tc.source)
			}
		})
	}
	if _, err := DefaultKernel(t.TempDir()); err != ErrNoBootloader {
		t.Fatalf("no bootloader: %v", err)
	}
}

// TestChooseGrub covers GRUB_DEFAULT's spellings and next_entry.
func TestChooseGrub(t *testing.T) {
	f, err := os.Open("testdata/debian12/boot/grub/grub.cfg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := parseGrubCfg(f)
	if err != nil {
		t.Fatal(err)
	}
	adv := "gnulinux-advanced-8f5a9d1e-2c3b-4d5e-9f60-1a2b3c4d5e6f"
	for _, tc := range []struct {
		def  string
		env  map[string]string
		want string // kernel
		fail bool
	}{
		{def: "", want: "/boot/vmlinuz-6.12.95+deb12-amd64"},
		{def: "0", want: "/boot/vmlinuz-6.12.95+deb12-amd64"},
		{def: "1>2", want: "/boot/vmlinuz-6.1.0-56-amd64"},
		{def: "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-56-amd64", want: "/boot/vmlinuz-6.1.0-56-amd64"},
		{def: adv + ">gnulinux-6.1.0-56-amd64-recovery-8f5a9d1e-2c3b-4d5e-9f60-1a2b3c4d5e6f", want: "/boot/vmlinuz-6.1.0-56-amd64"},
		{def: "saved", env: map[string]string{"saved_entry": "1>2"}, want: "/boot/vmlinuz-6.1.0-56-amd64"},
		{def: "saved", want: "/boot/vmlinuz-6.12.95+deb12-amd64"},
		{def: "0", env: map[string]string{"next_entry": "1>2"}, want: "/boot/vmlinuz-6.1.0-56-amd64"},
		{def: "1", fail: true}, // a submenu is no kernel
		{def: "7", fail: true},
		{def: "nosuch", fail: true},
	} {
		e, src, err := chooseGrub(entries, tc.def, tc.env)
		if tc.fail != (err != nil) || !tc.fail && e.Linux != tc.want {
			t.Errorf("GRUB_DEFAULT=%q env %v: %s (%s), %v; want %s", tc.def, tc.env, e.Linux, src, err, tc.want)
		}
	}
	n := 0
	for _, e := range entries {
		if e.Linux != "" {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("%d kernel entries; want 5", n)
	}
}

func TestVersionLess(t *testing.T) {
	for _, p := range [][2]string{{"6.1.0-9-amd64", "6.1.0-10-amd64"}, {"6.1.0-56-amd64", "6.12.95+deb12-amd64"}, {"5.15.0", "6.1"}} {
		if !VersionLess(p[0], p[1]) || VersionLess(p[1], p[0]) {
			t.Errorf("%s < %s", p[0], p[1])
		}
	}
}
