package memregion

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) {
	// fs regions made by the tests mount under a directory of their own.
	dir, err := os.MkdirTemp("", "ckpt-fs-mounts-")
	if err != nil {
		panic(err)
	}
	FSMountDir = filepath.Join(dir, "fs")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
