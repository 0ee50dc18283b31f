// Package memregiontest builds hostile regions: regions whose bytes and
// entries try to turn ckpt against the host (symlinks out of the region,
// FIFOs that block whoever opens them, huge metadata, overflowing
// extents, unknown flags and versions, flipped bits), next to decoy files
// outside them that nothing may read, write or delete. Tests of every
// verb that opens a region run over them.
//
// The regions start as real ones made through the memregion API and are
// then damaged through the documented on-disk format (superblock and
// manifest framing), with valid checksums where a class needs them, so
// that validation rather than a checksum is what must refuse them.
package memregiontest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sys/unix"
)

// Region is one hostile region.
type Region struct {
	Class string // what it attacks, e.g. "object-symlink-fifo"
	Kind  string // memregion.KindDir or KindRaw
	Path  string
	// Want is the sentinel that opening it read-only and verifying it
	// must fail with.
	Want error
	// ObjectsOnly regions have intact metadata and hostile objects:
	// reading metadata alone (inspect) succeeds; verifying fails.
	ObjectsOnly bool
	// Empty regions hold no checkpoint (Want is ErrNotSealed): Format
	// without force may format them. Every other one it must refuse.
	Empty bool
}

// Kit is a directory of hostile regions and of the decoys they point at.
type Kit struct {
	Dir     string   // holds regions/ and outside/
	Outside string   // the decoys: a FIFO, files, a directory
	Regions []Region // one per class
	Skipped []string // classes this host cannot build (e.g. no mknod), with the reason

	decoys map[string]decoy
}

// DecoyContent is the content of the decoy files and of the objects the
// symlinks replace, so that following a symlink would verify.
const DecoyContent = "decoy: outside the region; must stay unread, unchanged and undeleted\n"

// Build makes the kit in dir (which should be empty).
func Build(dir string) (*Kit, error) {
	k := &Kit{Dir: dir, Outside: filepath.Join(dir, "outside")}
	if err := k.makeDecoys(); err != nil {
		return nil, err
	}
	for _, c := range classes {
		path := filepath.Join(dir, "regions", c.class, "region")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		err := c.build(k, path)
		if errors.Is(err, errSkip) {
			k.Skipped = append(k.Skipped, fmt.Sprintf("%s: %v", c.class, err))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("building %s: %w", c.class, err)
		}
		k.Regions = append(k.Regions, Region{Class: c.class, Kind: c.kind, Path: path, Want: c.want, Empty: c.want == memregion.ErrNotSealed, ObjectsOnly: objectsOnly[c.class]})
	}
	var err error
	k.decoys, err = snapshot(k.Outside)
	return k, err
}

var errSkip = errors.New("skipped")

func (k *Kit) decoy(name string) string { return filepath.Join(k.Outside, name) }

func (k *Kit) makeDecoys() error {
	if err := os.MkdirAll(filepath.Join(k.Outside, "dir", "sub"), 0o700); err != nil {
		return err
	}
	marker, _ := json.Marshal(map[string]any{"format": memregion.FormatVersion, "id": "decoy"})
	for name, content := range map[string]string{
		"file": DecoyContent, "dir/a": DecoyContent, "dir/sub/a": DecoyContent, "marker": string(marker),
	} {
		if err := os.WriteFile(k.decoy(name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return unix.Mkfifo(k.decoy("fifo"), 0o600)
}

// CheckDecoys reports every decoy that was read into (a FIFO that lost
// its type), written, created or deleted since Build.
func (k *Kit) CheckDecoys() error {
	now, err := snapshot(k.Outside)
	if err != nil {
		return err
	}
	var errs []error
	for name, was := range k.decoys {
		is, ok := now[name]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("decoy %s was deleted", name))
		case is != was:
			errs = append(errs, fmt.Errorf("decoy %s changed: %+v, was %+v", name, is, was))
		}
	}
	for name := range now {
		if _, ok := k.decoys[name]; !ok {
			errs = append(errs, fmt.Errorf("decoy directory gained %s", name))
		}
	}
	return errors.Join(errs...)
}

type decoy struct {
	Mode  fs.FileMode
	Size  int64
	MTime time.Time
	Sum   [32]byte
}

func snapshot(root string) (map[string]decoy, error) {
	m := map[string]decoy{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		d := decoy{Mode: fi.Mode(), Size: fi.Size(), MTime: fi.ModTime()}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			d.Sum = sha256.Sum256(b)
		}
		m[p] = d
		return nil
	})
	return m, err
}

// Guard runs fn with a deadline and turns a panic into an error: a
// verb that blocks (on a FIFO) or panics fails the test instead of
// hanging or crashing it. A goroutine that hung is left behind.
func Guard(timeout time.Duration, fn func() error) error {
	type result struct {
		err   error
		panic any
		stack []byte
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{panic: p, stack: debug.Stack()}
			}
		}()
		done <- result{err: fn()}
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			return &GuardError{Panic: true, Err: fmt.Errorf("panic: %v\n%s", r.panic, r.stack)}
		}
		return r.err
	case <-time.After(timeout):
		return &GuardError{Hung: true, Err: fmt.Errorf("still running after %s", timeout)}
	}
}

// GuardError is a verb that hung or panicked under Guard.
type GuardError struct {
	Hung, Panic bool
	Err         error
}

func (e *GuardError) Error() string { return e.Err.Error() }

// Superblock and manifest framing, as documented in memregion's raw.go
// and manifest.go.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const (
	sbFormat, sbFlags, sbSize, sbGeneration = 8, 12, 16, 40
	sbManifestOff, sbManifestLen, sbCRCOf   = 48, 56, 64
	sbCRC                                   = 68
	manifestHeaderLen                       = 24
)

// Frame frames a manifest body with valid checksums and the given version.
func Frame(body []byte, version uint32) []byte {
	b := make([]byte, manifestHeaderLen, manifestHeaderLen+len(body))
	copy(b, "CKPTMAN\x00")
	le := binary.LittleEndian
	le.PutUint32(b[8:], version)
	le.PutUint32(b[12:], uint32(len(body)))
	le.PutUint32(b[16:], crc32.Checksum(body, castagnoli))
	le.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return append(b, body...)
}

// Reseal recomputes a superblock's checksum after its fields were changed.
func Reseal(sb []byte) {
	binary.LittleEndian.PutUint32(sb[sbCRC:], crc32.Checksum(sb[:sbCRC], castagnoli))
}
