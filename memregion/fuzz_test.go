package memregion

import (
	"bytes"
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
		if s.ManifestOff != 0 && s.ManifestOff+s.ManifestLen > s.Size {
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
