package memregion

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// fs regions made by the tests mount under a directory of their own.
	dir, err := os.MkdirTemp("", "ckpt-fs-mounts-")
	if err != nil {
		panic(err)
	}
	FSMountDir = filepath.Join(dir, "fs")
	code := m.Run()
	// A failed test may leave a mount there: never recurse into it.
	if ents, err := os.ReadDir(FSMountDir); err == nil {
		for _, e := range ents {
			unix.Unmount(filepath.Join(FSMountDir, e.Name()), unix.MNT_DETACH)
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
