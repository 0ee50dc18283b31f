package memregion

import (
	"fmt"
	"strconv"
	"strings"
)

// Size units.
const (
	KiB int64 = 1 << 10
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
	TiB int64 = 1 << 40
)

// ParseSize parses sizes as the kernel's memparse does ("256M", "1G",
// "4096", "2T"); suffixes are binary and case-insensitive, "iB"/"B" allowed.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = KiB
		case 'M':
			mult = MiB
		case 'G':
			mult = GiB
		case 'T':
			mult = TiB
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 0, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return v * mult, nil
}

// FormatSize renders n in the largest binary unit that divides it exactly,
// in the form the kernel command line accepts ("256M", "1G").
func FormatSize(n int64) string {
	for _, u := range []struct {
		sfx string
		m   int64
	}{{"T", TiB}, {"G", GiB}, {"M", MiB}, {"K", KiB}} {
		if n != 0 && n%u.m == 0 {
			return strconv.FormatInt(n/u.m, 10) + u.sfx
		}
	}
	return strconv.FormatInt(n, 10)
}

// HumanBytes renders n for people ("1.5 GiB").
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
