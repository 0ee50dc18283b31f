package memregion

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"
)

// FormatVersion is the on-region format this package writes and reads.
const FormatVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Manifest is the record of one committed checkpoint. It is written last;
// a region without a complete, checksummed manifest holds no checkpoint.
type Manifest struct {
	Version    int               `json:"version"`
	RegionID   string            `json:"region_id"`
	Kernel     string            `json:"kernel"`  // uname -r when sealed
	BootID     string            `json:"boot_id"` // /proc/sys/kernel/random/boot_id when sealed
	Hostname   string            `json:"hostname,omitempty"`
	Created    time.Time         `json:"created"`
	Objects    []ObjectInfo      `json:"objects"`
	Workloads  []WorkloadRecord  `json:"workloads,omitempty"`
	Attributes map[string]string `json:"attributes,omitempty"` // free-form (target kernel, tool versions)
}

// ObjectInfo describes one object in the region.
type ObjectInfo struct {
	Name    string   `json:"name"`
	Size    int64    `json:"size"`
	XXH3    uint64   `json:"xxh3"`              // xxh3-64 of the object's bytes
	Extents []Extent `json:"extents,omitempty"` // raw layout only: where the bytes are
}

// Extent is a byte range of a raw region.
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// WorkloadRecord is what a backend needs to restore one workload: the
// objects that hold its state and an opaque, backend-defined recipe.
type WorkloadRecord struct {
	ID          string `json:"id"`
	Kind        string `json:"kind"`
	Backend     string `json:"backend"`
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
	// Prefix is the workload's directory of objects, as the suspend
	// chose it: a restore reads it rather than recomputing it.
	Prefix  string          `json:"prefix,omitempty"`
	Objects []string        `json:"objects,omitempty"`
	Restore json.RawMessage `json:"restore,omitempty"`
	// FrozenAt is when the suspend froze the workload: its blackout runs
	// from there until its restore has ended.
	FrozenAt *time.Time `json:"frozen_at,omitempty"`
}

// Object returns the named object's info.
func (m *Manifest) Object(name string) (ObjectInfo, bool) {
	for _, o := range m.Objects {
		if o.Name == name {
			return o, true
		}
	}
	return ObjectInfo{}, false
}

// TotalBytes is the sum of the objects' sizes.
func (m *Manifest) TotalBytes() int64 {
	var n int64
	for _, o := range m.Objects {
		n += o.Size
	}
	return n
}

// validate checks the manifest's internal consistency.
func (m *Manifest) validate() error {
	if m.Version != FormatVersion {
		return fmt.Errorf("%w: manifest version %d, this ckpt reads %d", ErrVersion, m.Version, FormatVersion)
	}
	seen := make(map[string]bool, len(m.Objects))
	var total int64
	for _, o := range m.Objects {
		if err := validName(o.Name); err != nil {
			return fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
		}
		if seen[o.Name] {
			return fmt.Errorf("%w: manifest names object %q twice", ErrCorrupt, o.Name)
		}
		seen[o.Name] = true
		if o.Size < 0 || o.Size > maxRawSize || total > maxRawSize-o.Size {
			return fmt.Errorf("%w: object %q has an impossible size %d", ErrCorrupt, o.Name, o.Size)
		}
		total += o.Size
		if err := validExtents(o); err != nil {
			return err
		}
	}
	for _, w := range m.Workloads {
		for _, name := range w.Objects {
			if !seen[name] {
				return fmt.Errorf("%w: workload %q names object %q the manifest does not hold", ErrCorrupt, w.ID, name)
			}
		}
	}
	return nil
}

// validExtents checks that an object's extents are each inside the
// largest possible region and add up to its size, without overflow.
func validExtents(o ObjectInfo) error {
	if len(o.Extents) == 0 {
		return nil
	}
	var n int64
	for _, e := range o.Extents {
		if e.Off < 0 || e.Len <= 0 || e.Off > maxRawSize || e.Len > maxRawSize-e.Off || n > maxRawSize-e.Len {
			return fmt.Errorf("%w: object %q has a bad extent %d+%d", ErrCorrupt, o.Name, e.Off, e.Len)
		}
		n += e.Len
	}
	if n != o.Size {
		return fmt.Errorf("%w: object %q: extents hold %d bytes, size is %d", ErrCorrupt, o.Name, n, o.Size)
	}
	return nil
}

// Manifest framing: a fixed header then the JSON body.
//
//	0  magic   "CKPTMAN\x00"
//	8  version uint32 LE
//	12 length  uint32 LE (body bytes)
//	16 crc32c  uint32 LE (of the body)
//	20 hcrc    uint32 LE (crc32c of bytes 0..20)
//	24 body
const manifestHeaderLen = 24

// maxManifest bounds a manifest's body, on writing and before reading it
// into memory (a manifest of a host with thousands of workloads is a few
// MiB).
const maxManifest = 64 * MiB

var manifestMagic = [8]byte{'C', 'K', 'P', 'T', 'M', 'A', 'N', 0}

func encodeManifest(m *Manifest) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(body) > int(maxManifest) {
		return nil, fmt.Errorf("manifest too large: %d bytes", len(body))
	}
	b := make([]byte, manifestHeaderLen, manifestHeaderLen+len(body))
	copy(b, manifestMagic[:])
	binary.LittleEndian.PutUint32(b[8:], FormatVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(body, castagnoli))
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return append(b, body...), nil
}

// decodeManifest parses and validates framed manifest bytes. Any bytes
// that are not a complete, intact manifest give an error, never a panic.
func decodeManifest(b []byte) (*Manifest, error) {
	if len(b) < manifestHeaderLen {
		return nil, fmt.Errorf("%w: manifest truncated (%d bytes)", ErrCorrupt, len(b))
	}
	if !bytes.Equal(b[:8], manifestMagic[:]) {
		return nil, fmt.Errorf("%w: manifest has no magic", ErrCorrupt)
	}
	if got, want := crc32.Checksum(b[:20], castagnoli), binary.LittleEndian.Uint32(b[20:]); got != want {
		return nil, fmt.Errorf("%w: manifest header checksum mismatch", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != FormatVersion {
		return nil, fmt.Errorf("%w: manifest format %d, this ckpt reads %d", ErrVersion, v, FormatVersion)
	}
	n := int64(binary.LittleEndian.Uint32(b[12:]))
	if n > maxManifest {
		return nil, fmt.Errorf("%w: manifest header records %d bytes, above the %s limit", ErrCorrupt, n, HumanBytes(maxManifest))
	}
	if int64(len(b)-manifestHeaderLen) < n {
		return nil, fmt.Errorf("%w: manifest truncated: %d of %d bytes", ErrCorrupt, len(b)-manifestHeaderLen, n)
	}
	body := b[manifestHeaderLen : manifestHeaderLen+n]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[16:]); got != want {
		return nil, fmt.Errorf("%w: manifest checksum mismatch (%08x, header says %08x)", ErrCorrupt, got, want)
	}
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// manifestLen returns the total framed length from a header, for readers
// that fetch the header first.
func manifestLen(hdr []byte) (int64, error) {
	if len(hdr) < manifestHeaderLen || !bytes.Equal(hdr[:8], manifestMagic[:]) {
		return 0, fmt.Errorf("%w: manifest has no magic", ErrCorrupt)
	}
	return manifestHeaderLen + int64(binary.LittleEndian.Uint32(hdr[12:])), nil
}
