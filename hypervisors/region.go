package hypervisors

import (
	"encoding/json"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/ckpt-dev/ckpt/memregion"
)

// RegionSink stores a workload's objects in a region under prefix.
type RegionSink struct {
	Region *memregion.Region
	Prefix string // e.g. "criu/web-1"
	// Rescue journals a rescue record (see Rescuer); nil drops it.
	Rescue func(record json.RawMessage) error
}

// RecordRescue implements Rescuer.
func (s RegionSink) RecordRescue(record json.RawMessage) error {
	if s.Rescue == nil {
		return nil
	}
	return s.Rescue(record)
}

// Create implements ObjectSink.
func (s RegionSink) Create(name string, sizeHint int64) (io.WriteCloser, error) {
	return s.Region.Create(path.Join(s.Prefix, name), sizeHint)
}

// RegionSource reads a workload's objects from a sealed region.
type RegionSource struct {
	Region   *memregion.Region
	Manifest *memregion.Manifest
	Prefix   string
}

// Names implements ObjectSource: object names relative to the prefix.
func (s RegionSource) Names() []string {
	var out []string
	for _, o := range s.Manifest.Objects {
		if rest, ok := strings.CutPrefix(o.Name, s.Prefix+"/"); ok {
			out = append(out, rest)
		}
	}
	sort.Strings(out)
	return out
}

// Open implements ObjectSource.
func (s RegionSource) Open(name string) (io.ReadCloser, error) {
	return s.Region.OpenObject(path.Join(s.Prefix, name))
}

var (
	_ DirectSink   = RegionSink{}
	_ Rescuer      = RegionSink{}
	_ DirectSource = RegionSource{}
)

// Dir implements DirectSink.
func (s RegionSink) Dir(sub string) (string, error) {
	return s.Region.ObjectDir(path.Join(s.Prefix, sub))
}

// Adopt implements DirectSink.
func (s RegionSink) Adopt(name string) error { return s.Region.Adopt(path.Join(s.Prefix, name)) }

// Dir implements DirectSource. The engine verifies the region before any
// restore, so files read in place are checked.
func (s RegionSource) Dir(sub string) (string, error) {
	return s.Region.CommittedDir(path.Join(s.Prefix, sub))
}
