package memregion

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func loadMap(t *testing.T, file string) []*Resource {
	t.Helper()
	f, err := os.Open("testdata/" + file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mm, err := ParseMemoryMap(f)
	if err != nil {
		t.Fatal(err)
	}
	return mm
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		file string
		size int64
		want string // cmdline fragment, or "" for ErrNoPlan
	}{
		// This host: 3 GiB below 4G (kernel image at 16 MiB) and 21 GiB above.
		{"iomem-host-fc.txt", 256 * MiB, "memmap=256M!4G"},
		{"iomem-host-fc.txt", 4 * GiB, "memmap=4G!4G"},
		{"iomem-host-fc.txt", 100 * MiB, "memmap=128M!4G"}, // rounded up to the alignment
		{"iomem-host-fc.txt", 64 * GiB, ""},
		// A QEMU guest with -m 2G: KASLR put the kernel at 848 MiB.
		{"iomem-qemu-2g.txt", 256 * MiB, "memmap=256M!1G"},
		{"iomem-qemu-2g.txt", 1 * GiB, ""}, // 1G..2G-128K is less than 1 GiB
		// Kernel image sitting where the region would go: skip past it.
		{"iomem-qemu-2g-kaslr-high.txt", 256 * MiB, "memmap=256M!1280M"},
	} {
		mm := loadMap(t, tc.file)
		p, err := Plan(mm, tc.size)
		if tc.want == "" {
			if !errors.Is(err, ErrNoPlan) {
				t.Errorf("%s %s: Plan = %v, %v; want ErrNoPlan", tc.file, FormatSize(tc.size), p, err)
			}
			continue
		}
		if err != nil || p.CmdlineFragment() != tc.want {
			t.Errorf("%s %s: Plan = %s, %v; want %s", tc.file, FormatSize(tc.size), p.CmdlineFragment(), err, tc.want)
		}
		if p.Start%uint64(PlanAlign) != 0 || p.Start < uint64(PlanMinStart) {
			t.Errorf("%s: proposal %#x is not aligned or is in the first GiB", tc.file, p.Start)
		}
	}
}

func TestReservations(t *testing.T) {
	rs := Reservations(loadMap(t, "iomem-qemu-2g-memmap.txt"))
	if len(rs) != 1 || rs[0].CmdlineFragment() != "memmap=256M!1G" {
		t.Fatalf("Reservations = %+v", rs)
	}
	if rs := Reservations(loadMap(t, "iomem-host-fc.txt")); len(rs) != 0 {
		t.Fatalf("host has no reservation, got %+v", rs)
	}
}

func TestParseMemoryMapErrors(t *testing.T) {
	for _, bad := range []string{
		"00000000-00000fff Reserved\n",
		"zz-00000fff : Reserved\n",
		"00001000-00000fff : Backwards\n",
		"00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n", // non-root view
	} {
		if _, err := ParseMemoryMap(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMemoryMap(%q) accepted", bad)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"256M": 256 * MiB, "1G": GiB, "4096": 4096, "2t": 2 * TiB, "512MiB": 512 * MiB, "0x1000": 4096} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1M", "1.5G", "99999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	for n, want := range map[int64]string{256 * MiB: "256M", 1280 * MiB: "1280M", 4 * GiB: "4G", 1000: "1000"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %s; want %s", n, got, want)
		}
	}
}
