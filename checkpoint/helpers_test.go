package checkpoint_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corruptObject flips a byte of the object file of workload id in a
// directory region.
func corruptObject(t *testing.T, region, id string) {
	t.Helper()
	var path string
	filepath.Walk(region, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.Contains(p, "/"+id+"/") {
			path = p
		}
		return nil
	})
	if path == "" {
		t.Fatalf("no object file of %s under %s", id, region)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, 100)
	b[0] ^= 1
	f.WriteAt(b, 100)
}
