package memregion

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Kinds of region.
const (
	KindDir = "dir" // a directory: tmpfs, /run (soft-reboot), or a disk
	KindRaw = "raw" // the raw layout on a block device (/dev/pmemN) or a file
	KindFS  = "fs"  // a filesystem ckpt makes on a block device, DAX on pmem (fs.go)
)

// FormatOptions configure Format.
type FormatOptions struct {
	// Kind is KindDir, KindRaw or KindFS. Empty keeps the layout a block
	// device has; a new block device with DAX (pmem) gets the fs layout
	// when mkfs.ext4 is installed, any other device or an existing regular
	// file the raw layout, anything else the dir layout.
	Kind string
	// Size creates a raw region file of this size when the file is new.
	Size int64
	// Force formats even over a committed checkpoint. Without it, Format
	// refuses, because that checkpoint may be the only copy of workloads.
	Force bool
}

// Open opens a formatted region: a directory, or a device or file with
// the raw layout. It reads only metadata.
func Open(path string, opts Options) (*Region, error) {
	var st store
	var err error
	switch detectKind(path) {
	case KindDir:
		st, err = openDir(path)
	case KindFS:
		st, err = openFS(path, opts.ReadOnly)
	default:
		st, err = openRaw(path, opts.ReadOnly)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", ErrNotFormatted, path)
		}
		return nil, err
	}
	return &Region{
		st: st, path: path, log: opts.logger(), readOnly: opts.ReadOnly,
		writing: map[string]bool{}, names: map[string]bool{},
	}, nil
}

func detectKind(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return KindDir
	}
	if st.IsDir() {
		return KindDir
	}
	if st.Mode()&os.ModeDevice != 0 && isFSLayout(path) {
		return KindFS
	}
	return KindRaw
}
