package memregion

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Everything that parses region bytes must reject garbage without
// panicking. Seeds live in testdata/fuzz/<Target>/.

func FuzzDecodeManifest(f *testing.F) {
	m := &Manifest{Objects: []ObjectInfo{{Name: "a/b", Size: 3, XXH3: 7, Extents: []Extent{{Off: MiB, Len: 3}}}},
		Workloads: []WorkloadRecord{{ID: "w", Backend: "criu", Objects: []string{"a/b"}, Restore: []byte(`{}`)}}}
	fillIdentity(m, "id")
	b, _ := encodeManifest(m)
	f.Add(b)
	f.Add(b[:manifestHeaderLen])
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeManifest(b)
		if err != nil {
			return
		}
		// Anything accepted must survive a round trip.
		b2, err := encodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeManifest(b2); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzParseSuperblock(f *testing.F) {
	sb := superblock{Format: FormatVersion, Size: uint64(256 * MiB), Generation: 3, ManifestOff: uint64(2 * MiB), ManifestLen: 100}
	f.Add(sb.encode())
	f.Add(sb.encode()[:superblockUsed])
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseSuperblock(b)
		if err != nil {
			return
		}
		if s.ManifestOff != 0 && (s.ManifestLen > s.Size || s.ManifestOff > s.Size-s.ManifestLen) {
			t.Fatalf("accepted a manifest outside the region: %+v", s)
		}
		if !bytes.Equal(s.encode()[:superblockUsed], b[:superblockUsed]) {
			t.Fatalf("superblock does not round-trip")
		}
	})
}

func FuzzParseMemoryMap(f *testing.F) {
	f.Add([]byte("00000000-00000fff : Reserved\n00100000-bfffffff : System RAM\n  01000000-02276f47 : Kernel code\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mm, err := ParseMemoryMap(bytes.NewReader(b))
		if err != nil {
			return
		}
		if p, err := Plan(mm, 256*MiB); err == nil && p.Start%uint64(PlanAlign) != 0 {
			t.Fatalf("unaligned proposal %#x", p.Start)
		}
		Reservations(mm)
	})
}

// The targets below get past the checksums: they fuzz the parsed
// structure (manifest JSON, superblock fields) and frame it with valid
// CRCs, so that what they test is the validation behind the checksums.

// frame frames a manifest body with a valid header (version 1).
func frame(body []byte) []byte {
	b := make([]byte, manifestHeaderLen, manifestHeaderLen+len(body))
	copy(b, manifestMagic[:])
	putLE32(b[8:], FormatVersion)
	b = append(b, body...)
	fixHeader(b)
	return b
}

// checkAccepted asserts what every accepted manifest guarantees.
func checkAccepted(t *testing.T, m *Manifest) {
	t.Helper()
	if m.Version != FormatVersion {
		t.Fatalf("accepted version %d", m.Version)
	}
	var total int64
	for _, o := range m.Objects {
		if validName(o.Name) != nil || o.Size < 0 || o.Size > maxRawSize {
			t.Fatalf("accepted object %+v", o)
		}
		total += o.Size
		if total < 0 || total > maxRawSize {
			t.Fatalf("accepted sizes summing to %d", total)
		}
		var n int64
		for _, e := range o.Extents {
			if e.Off < 0 || e.Len <= 0 || e.Off+e.Len < e.Off || e.Off+e.Len > maxRawSize {
				t.Fatalf("accepted extent %+v of %q", e, o.Name)
			}
			n += e.Len
		}
		if len(o.Extents) > 0 && n != o.Size {
			t.Fatalf("accepted extents of %d bytes for size %d", n, o.Size)
		}
	}
	if m.TotalBytes() != total {
		t.Fatalf("TotalBytes %d, want %d", m.TotalBytes(), total)
	}
}

func seedManifest() []byte {
	m := &Manifest{Objects: []ObjectInfo{{Name: "a/b", Size: 3, XXH3: 7, Extents: []Extent{{Off: MiB, Len: 1}, {Off: 2 * MiB, Len: 2}}}},
		Workloads: []WorkloadRecord{{ID: "w", Backend: "criu", Objects: []string{"a/b"}, Restore: []byte(`{}`)}}}
	fillIdentity(m, "id")
	b, _ := json.Marshal(m)
	return b
}

// FuzzManifestBody fuzzes the manifest's JSON behind a valid frame.
func FuzzManifestBody(f *testing.F) {
	f.Add(seedManifest())
	f.Add([]byte(`{"version":1,"objects":[{"name":"x","size":4611686018427387904,"extents":[{"off":4611686018427387904,"len":4611686018427387904}]}]}`))
	f.Add([]byte(`{"version":1,"objects":[{"name":"x","size":0,"extents":[{"off":1,"len":9223372036854775807},{"off":1,"len":9223372036854775807}]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := decodeManifest(frame(body))
		if err != nil {
			return
		}
		checkAccepted(t, m)
		b, err := encodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeManifest(b); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// FuzzManifestFields fuzzes one object's fields behind a valid frame.
func FuzzManifestFields(f *testing.F) {
	f.Add("a", int64(3), int64(MiB), int64(3), uint8(1), 1)
	f.Add("a", int64(0), int64(1<<62), int64(1<<62), uint8(4), 1)
	f.Add("../x", int64(-1), int64(-1), int64(0), uint8(0), 2)
	f.Fuzz(func(t *testing.T, name string, size, off, n int64, count uint8, version int) {
		o := ObjectInfo{Name: name, Size: size}
		for range count % 8 {
			o.Extents = append(o.Extents, Extent{Off: off, Len: n})
		}
		m := &Manifest{Version: version, Objects: []ObjectInfo{o}}
		body, err := json.Marshal(m)
		if err != nil {
			return
		}
		got, err := decodeManifest(frame(body))
		if err != nil {
			return
		}
		checkAccepted(t, got)
	})
}

// FuzzSuperblockFields fuzzes every superblock field behind a valid CRC.
func FuzzSuperblockFields(f *testing.F) {
	f.Add(uint32(FormatVersion), uint32(0), uint64(256*MiB), uint64(2*MiB), uint64(100))
	f.Add(uint32(FormatVersion), uint32(0), uint64(256*MiB), uint64(1<<64-10), uint64(100))
	f.Add(uint32(FormatVersion), uint32(8), uint64(256*MiB), uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, format, flags uint32, size, off, n uint64) {
		sb := superblock{Format: format, Flags: flags, Size: size, ManifestOff: off, ManifestLen: n}
		s, err := parseSuperblock(sb.encode())
		if err != nil {
			return
		}
		switch {
		case s.Flags != 0, s.Format != FormatVersion, s.Size < uint64(rawMinSize), s.Size > maxRawSize:
			t.Fatalf("accepted %+v", s)
		case s.ManifestOff != 0 && (s.ManifestOff < uint64(rawDataStart) || s.ManifestLen < manifestHeaderLen ||
			s.ManifestLen > uint64(manifestHeaderLen+maxManifest) || s.ManifestLen > s.Size || s.ManifestOff > s.Size-s.ManifestLen):
			t.Fatalf("accepted a manifest outside the region or above the cap: %+v", s)
		}
	})
}

// FuzzRawRegion writes a fuzzed superblock and manifest, both with valid
// checksums, into a real raw region file and runs the read verbs over
// it: no panic, no read outside the file, no hang.
func FuzzRawRegion(f *testing.F) {
	f.Add(uint64(16*MiB), uint64(MiB), seedManifest())
	f.Add(uint64(16*MiB), uint64(16*MiB-30), seedManifest())
	f.Add(uint64(1<<40), uint64(MiB), []byte(`{"version":1,"objects":[{"name":"x","size":10,"extents":[{"off":16777200,"len":10}]}]}`))
	path := filepath.Join(f.TempDir(), "raw")
	if err := os.WriteFile(path, make([]byte, 16*MiB), 0o600); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, size, off uint64, body []byte) {
		framed := frame(body)
		if int64(len(framed)) > 8*MiB {
			return
		}
		if off < uint64(rawDataStart) || off > uint64(16*MiB-int64(len(framed))) {
			off = uint64(rawDataStart)
		}
		sb := superblock{Format: FormatVersion, Size: size, ManifestOff: off, ManifestLen: uint64(len(framed)), ManifestCRC: crc32c(framed)}
		fd, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fd.WriteAt(sb.encode(), 0)
		fd.WriteAt(framed, int64(off))
		fd.Close()
		r, err := Open(path, Options{ReadOnly: true})
		if err != nil {
			return
		}
		defer r.Close()
		m, err := r.Verify(context.Background())
		if err != nil || m == nil {
			return
		}
		for _, o := range m.Objects {
			for _, e := range o.Extents {
				if e.Off < rawDataStart || e.Off+e.Len > 16*MiB {
					t.Fatalf("verified an extent outside the file: %+v", e)
				}
			}
			rc, err := r.OpenObject(o.Name)
			if err != nil {
				t.Fatalf("verified object %q does not open: %v", o.Name, err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Fatalf("verified object %q does not read: %v", o.Name, err)
			}
			rc.Close()
		}
	})
}
