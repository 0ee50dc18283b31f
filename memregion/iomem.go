package memregion

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Resource is one line of /proc/iomem: an inclusive physical range, its
// name, and the ranges nested inside it.
type Resource struct {
	Start, End uint64 // inclusive, as the kernel prints them
	Name       string
	Children   []*Resource
}

// Size is the number of bytes the resource spans.
func (r *Resource) Size() uint64 { return r.End - r.Start + 1 }

// Names of /proc/iomem entries this package cares about.
const (
	iomemSystemRAM = "System RAM"
	// iomemLegacyPmem is how memmap=SIZE!OFFSET reservations appear.
	iomemLegacyPmem = "Persistent Memory (legacy)"
)

// MemoryMap reads /proc/iomem. It must run as root: other users see zeros.
func MemoryMap() ([]*Resource, error) {
	f, err := os.Open("/proc/iomem")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMemoryMap(f)
}

// ParseMemoryMap parses the text of /proc/iomem into a tree of resources.
func ParseMemoryMap(r io.Reader) ([]*Resource, error) {
	var roots []*Resource
	type level struct {
		indent int
		res    *Resource
	}
	var stack []level
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		res, err := parseIOMemLine(strings.TrimSpace(line))
		if err != nil {
			return nil, fmt.Errorf("iomem line %d: %w", n, err)
		}
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		if len(stack) == 0 {
			roots = append(roots, res)
		} else {
			p := stack[len(stack)-1].res
			p.Children = append(p.Children, res)
		}
		stack = append(stack, level{indent, res})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(roots) > 0 && roots[len(roots)-1].End == 0 && roots[0].End == 0 {
		return nil, fmt.Errorf("iomem shows only zero addresses: read it as root")
	}
	return roots, nil
}

func parseIOMemLine(s string) (*Resource, error) {
	rng, name, ok := strings.Cut(s, " : ")
	if !ok {
		return nil, fmt.Errorf("no ' : ' in %q", s)
	}
	lo, hi, ok := strings.Cut(rng, "-")
	if !ok {
		return nil, fmt.Errorf("bad range %q", rng)
	}
	start, err := strconv.ParseUint(lo, 16, 64)
	if err != nil {
		return nil, fmt.Errorf("bad start %q", lo)
	}
	end, err := strconv.ParseUint(hi, 16, 64)
	if err != nil || end < start {
		return nil, fmt.Errorf("bad end %q", hi)
	}
	return &Resource{Start: start, End: end, Name: name}, nil
}

// Reservation is an existing preserved range (a memmap=SIZE!OFFSET
// reservation the kernel shows as legacy persistent memory).
type Reservation struct {
	Start, Size uint64
	Device      string // /dev/pmemN when a pmem driver claimed it, else ""
}

// CmdlineFragment is the kernel parameter that reserves r.
func (r Reservation) CmdlineFragment() string {
	return fmt.Sprintf("memmap=%s!%s", FormatSize(int64(r.Size)), FormatSize(int64(r.Start)))
}

// Reservations lists legacy pmem ranges in the memory map.
func Reservations(mm []*Resource) []Reservation {
	var out []Reservation
	var walk func([]*Resource)
	walk = func(rs []*Resource) {
		for _, r := range rs {
			if r.Name == iomemLegacyPmem {
				out = append(out, Reservation{Start: r.Start, Size: r.Size()})
				continue
			}
			walk(r.Children)
		}
	}
	walk(mm)
	return out
}

// FindReservations reads the memory map and matches each reservation with
// the /dev/pmemN device that exposes it, when one does.
func FindReservations() ([]Reservation, error) {
	mm, err := MemoryMap()
	if err != nil {
		return nil, err
	}
	rs := Reservations(mm)
	for i := range rs {
		rs[i].Device = pmemDeviceFor(rs[i].Start, rs[i].Size)
	}
	return rs, nil
}

// pmemDeviceFor finds the pmem block device exposing a legacy range
// through sysfs: the nd region whose resource (physical start) lies in the
// range, and the pmem disk of a namespace inside it. (Legacy io namespaces
// do not show their own resource attribute.)
func pmemDeviceFor(start, size uint64) string {
	regions, _ := filepath.Glob("/sys/bus/nd/devices/region*")
	for _, reg := range regions {
		v, ok := sysfsHex(filepath.Join(reg, "resource"))
		if !ok || v < start || v >= start+size {
			continue
		}
		blocks, _ := filepath.Glob(filepath.Join(reg, "namespace*", "block", "pmem*"))
		if len(blocks) > 0 {
			return "/dev/" + filepath.Base(blocks[0])
		}
	}
	return ""
}

func sysfsHex(p string) (uint64, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 64)
	return v, err == nil
}

// Planning constraints.
const (
	// PlanAlign is the alignment of proposed ranges: the memory-hotplug
	// section size on x86-64; smaller alignments make the pmem driver fail.
	PlanAlign = 128 * MiB
	// PlanMinStart keeps proposals out of the first GiB, where firmware,
	// the kernel image and DMA zones live.
	PlanMinStart = GiB
)

// Proposal is a range the operator can reserve.
type Proposal struct {
	Start, Size uint64
}

// CmdlineFragment is the kernel parameter that reserves the range.
func (p Proposal) CmdlineFragment() string {
	return Reservation{Start: p.Start, Size: p.Size}.CmdlineFragment()
}

// Plan proposes a range of size bytes (rounded up to PlanAlign) inside one
// System RAM range, aligned to PlanAlign, at or above PlanMinStart, that
// overlaps nothing nested in that RAM (kernel image, crash kernel, …).
// Among candidates it prefers the lowest address in the largest RAM range,
// which keeps the region in the middle of RAM rather than at its edges.
func Plan(mm []*Resource, size int64) (Proposal, error) {
	if size <= 0 {
		return Proposal{}, fmt.Errorf("plan: size must be positive")
	}
	sz := uint64(alignUp(size, PlanAlign))
	rams := make([]*Resource, 0, len(mm))
	for _, r := range mm {
		if r.Name == iomemSystemRAM {
			rams = append(rams, r)
		}
	}
	sort.SliceStable(rams, func(i, j int) bool { return rams[i].Size() > rams[j].Size() })
	for _, ram := range rams {
		if p, ok := fitIn(ram, sz); ok {
			return p, nil
		}
	}
	return Proposal{}, fmt.Errorf("%w: %s aligned to %s above %s",
		ErrNoPlan, FormatSize(int64(sz)), FormatSize(PlanAlign), FormatSize(PlanMinStart))
}

func fitIn(ram *Resource, sz uint64) (Proposal, bool) {
	start := max(ram.Start, uint64(PlanMinStart))
	start = uint64(alignUp(int64(start), PlanAlign))
	for start+sz-1 <= ram.End && start+sz > start {
		clash := false
		for _, c := range ram.Children {
			if c.Start <= start+sz-1 && c.End >= start {
				clash = true
				start = uint64(alignUp(int64(c.End+1), PlanAlign))
				break
			}
		}
		if !clash {
			return Proposal{Start: start, Size: sz}, true
		}
	}
	return Proposal{}, false
}

func alignUp(v, a int64) int64 { return (v + a - 1) / a * a }
