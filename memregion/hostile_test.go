package memregion_test

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/memregion/memregiontest"
)

// verb is one library call a tool makes on a region.
type verb struct {
	name string
	run  func(path string) error
}

func openRO(path string, fn func(r *memregion.Region) error) error {
	r, err := memregion.Open(path, memregion.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

func openRW(path string, fn func(r *memregion.Region) error) error {
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

func readObject(r *memregion.Region, name string) error {
	rc, err := r.OpenObject(name)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// verbs are every library verb, read-only ones first; the last ones
// change the region (inside it).
var verbs = []verb{
	{"inspect", func(p string) error {
		return openRO(p, func(r *memregion.Region) error {
			r.ID()
			if _, _, err := r.Space(); err != nil {
				return err
			}
			r.Sealed()
			_, err := r.Manifest()
			return err
		})
	}},
	{"verify", func(p string) error {
		return openRO(p, func(r *memregion.Region) error { _, err := r.Verify(context.Background()); return err })
	}},
	{"open-object", func(p string) error {
		return openRO(p, func(r *memregion.Region) error {
			return errors.Join(readObject(r, "a"), readObject(r, "sub/a"))
		})
	}},
	{"committed-dir", func(p string) error {
		return openRO(p, func(r *memregion.Region) error { _, err := r.CommittedDir("sub"); return err })
	}},
	{"format", func(p string) error { return memregion.Format(p, memregion.FormatOptions{}) }},
	{"object-dir+adopt", func(p string) error {
		return openRW(p, func(r *memregion.Region) error {
			_, err := r.ObjectDir("sub")
			return errors.Join(err, r.Adopt("a"), r.Adopt("sub/a"))
		})
	}},
	{"create+seal", func(p string) error {
		return openRW(p, func(r *memregion.Region) error {
			w, err := r.Create("sub/new", 0)
			if err != nil {
				return err
			}
			w.Write([]byte("new"))
			if err := w.Close(); err != nil {
				return err
			}
			return r.Seal(context.Background(), &memregion.Manifest{})
		})
	}},
	{"discard", func(p string) error { return openRW(p, func(r *memregion.Region) error { return r.Discard() }) }},
	{"release", func(p string) error { return openRW(p, func(r *memregion.Region) error { return r.Release() }) }},
	{"format-force", func(p string) error { return memregion.Format(p, memregion.FormatOptions{Force: true}) }},
}

// TestHostileRegions runs every verb over every class of hostile region:
// none may read, write or delete anything outside the region, block, or
// panic; verifying must fail with the class's error, and Format without
// force must refuse every region that may hold a checkpoint.
func TestHostileRegions(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("building device nodes and sockets in regions needs root")
	}
	k, err := memregiontest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range k.Skipped {
		t.Logf("class not built: %s", s)
	}
	for _, h := range k.Regions {
		t.Run(h.Class, func(t *testing.T) {
			for _, v := range verbs {
				err := memregiontest.Guard(10*time.Second, func() error { return v.run(h.Path) })
				var ge *memregiontest.GuardError
				if errors.As(err, &ge) {
					t.Fatalf("%s: %v", v.name, err)
				}
				switch v.name {
				case "verify":
					if !errors.Is(err, h.Want) {
						t.Errorf("verify = %v; want %v", err, h.Want)
					}
				case "format":
					if err == nil && !h.Empty {
						t.Errorf("format without force accepted a region that may hold a checkpoint")
					}
				}
				t.Logf("%s: %v", v.name, err)
			}
		})
	}
	if err := k.CheckDecoys(); err != nil {
		t.Fatalf("outside the regions:\n%v", err)
	}
}
