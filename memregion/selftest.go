package memregion

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Selftest attribute keys recorded in the manifest.
const (
	attrSelftest = "selftest" // "<objects>x<bytes>"
)

// SelftestSpec describes a test checkpoint of known content.
type SelftestSpec struct {
	Objects int
	Size    int64 // bytes per object
}

func selftestName(i int) string { return fmt.Sprintf("selftest/obj-%03d", i) }

// selftestStream is object i's deterministic content.
func selftestStream(i int) io.Reader {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(i)+0x636b7074) // "ckpt"
	return rand.NewChaCha8(seed)
}

// WriteSelftest writes a test checkpoint of known pseudo-random content and
// seals it. It proves a region (and, across kexec, the reservation) keeps
// bytes intact; CheckSelftest verifies it.
func WriteSelftest(ctx context.Context, r *Region, spec SelftestSpec) (*Manifest, error) {
	if spec.Objects <= 0 || spec.Size < 0 {
		return nil, fmt.Errorf("selftest: need at least one object and a size")
	}
	if err := r.Fits(int64(spec.Objects) * spec.Size); err != nil {
		return nil, err
	}
	for i := range spec.Objects {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		w, err := r.Create(selftestName(i), spec.Size)
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(w, io.LimitReader(selftestStream(i), spec.Size)); err != nil {
			w.Abort()
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	}
	m := &Manifest{Attributes: map[string]string{attrSelftest: fmt.Sprintf("%dx%d", spec.Objects, spec.Size)}}
	if err := r.Seal(ctx, m); err != nil {
		return nil, err
	}
	return m, nil
}

// CheckSelftest verifies the region (checksums) and then compares every
// selftest object with the content WriteSelftest wrote.
func CheckSelftest(ctx context.Context, r *Region) (*Manifest, error) {
	m, err := r.Verify(ctx)
	if err != nil {
		return m, err
	}
	n, size, err := parseSelftestAttr(m.Attributes[attrSelftest])
	if err != nil {
		return m, err
	}
	for i := range n {
		if err := compareSelftest(r, i, size); err != nil {
			return m, err
		}
	}
	return m, nil
}

func parseSelftestAttr(s string) (int, int64, error) {
	a, b, ok := strings.Cut(s, "x")
	n, err1 := strconv.Atoi(a)
	size, err2 := strconv.ParseInt(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("selftest: the region holds no selftest checkpoint (attribute %q)", s)
	}
	return n, size, nil
}

func compareSelftest(r *Region, i int, size int64) error {
	rc, err := r.OpenObject(selftestName(i))
	if err != nil {
		return err
	}
	defer rc.Close()
	want := io.LimitReader(selftestStream(i), size)
	a, b := make([]byte, MiB), make([]byte, MiB)
	for off := int64(0); ; {
		n, err := io.ReadFull(rc, a)
		if _, werr := io.ReadFull(want, b[:n]); werr != nil && n > 0 {
			return werr
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return &ObjectError{selftestName(i), fmt.Sprintf("content differs near byte %d", off), ErrCorrupt}
		}
		off += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if off != size {
				return &ObjectError{selftestName(i), fmt.Sprintf("%d of %d bytes", off, size), ErrCorrupt}
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}
