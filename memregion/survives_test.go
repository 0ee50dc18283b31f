package memregion

import (
	"os"
	"strings"
	"testing"
)

// A Debian 13 host's mount table (trimmed), with a DAX filesystem on a
// pmem device and a mount point holding a space.
const mountinfoSample = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=1000000k,nr_inodes=250000,mode=755
25 24 0:22 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
26 22 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=300000k,mode=755
27 26 0:24 / /run/ckpt/big rw,relatime shared:6 - tmpfs ckpt rw,size=4000000k,mode=700
28 22 0:25 / /tmp rw,nosuid,nodev shared:7 - tmpfs tmpfs rw
29 22 259:0 / /mnt/pmem\040dax rw,relatime shared:8 - ext4 /dev/pmem0 rw,dax=always
30 22 254:16 / /var/lib/ckpt rw,relatime shared:9 - xfs /dev/vdb rw
31 22 0:26 / /tmp rw,nosuid,nodev shared:10 - ext4 /dev/vdc rw
`

func TestSurvives(t *testing.T) {
	for _, tc := range []struct {
		path                string
		soft, kexec, reboot bool
		keep, medium        string
	}{
		{"/run/ckpt/region", true, false, false, "", "tmpfs /run"},
		{"/run", true, false, false, "", "tmpfs /run"},
		// A tmpfs of its own below /run is unmounted by a soft-reboot.
		{"/run/ckpt/big/region", false, false, false, "", "tmpfs /run/ckpt/big"},
		{"/dev/shm/region", false, false, false, "", "tmpfs /dev/shm"},
		{"/mnt/pmem dax/region", true, true, false, "memmap=", "ext4 on pmem device pmem0"},
		{"/var/lib/ckpt/region", true, true, true, "", "xfs on /dev/vdb"},
		{"/var/lib/ckptx", true, true, true, "", "ext4 on /dev/vda"},
		// /tmp mounted twice: the later mount hides the earlier.
		{"/tmp/region", true, true, true, "", "ext4 on /dev/vdc"},
	} {
		s, err := survives(strings.NewReader(mountinfoSample), tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if s.SoftReboot != tc.soft || s.Kexec != tc.kexec || s.Reboot != tc.reboot || s.KeepCmdline != tc.keep || s.Medium != tc.medium {
			t.Errorf("%s: %+v; want soft %v kexec %v reboot %v keep %q medium %q", tc.path, s, tc.soft, tc.kexec, tc.reboot, tc.keep, tc.medium)
		}
	}
}

func TestSurvivesDevice(t *testing.T) {
	if s := deviceSurvival("pmem1"); !s.SoftReboot || !s.Kexec || s.Reboot || s.KeepCmdline != "memmap=" {
		t.Errorf("pmem1: %+v", s)
	}
	if s := deviceSurvival("vdb"); !s.SoftReboot || !s.Kexec || !s.Reboot {
		t.Errorf("vdb: %+v", s)
	}
	for _, name := range []string{"ram0", "zram0", "loop3"} {
		if s := deviceSurvival(name); !s.SoftReboot || s.Kexec || s.Reboot {
			t.Errorf("%s: %+v; want only a soft-reboot survived", name, s)
		}
	}
}

// A link to a device (a udev alias) is what it points at.
func TestSurvivesDeviceLink(t *testing.T) {
	link := t.TempDir() + "/region"
	if err := os.Symlink("/dev/null", link); err != nil {
		t.Fatal(err)
	}
	if s, err := Survives(link); err != nil || s.Medium != "RAM device null" && s.Medium != "block device null" {
		t.Fatalf("Survives(link to /dev/null) = %+v, %v; want it named null", s, err)
	}
}

func TestSurvivesThisHost(t *testing.T) {
	// The running host's own table: / is a mount, so anything resolves.
	s, err := Survives("/no/such/dir/anywhere")
	if err != nil || s.Medium == "" {
		t.Fatalf("Survives(/no/such/...) = %+v, %v", s, err)
	}
}
