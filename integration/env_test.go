package integration

import (
	"testing"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	testenv.Missing(t, format, args...)
}

func requireRoot(t *testing.T) { t.Helper(); testenv.RequireRoot(t) }

func requireTool(t *testing.T, name string) string { t.Helper(); return testenv.RequireTool(t, name) }

func cacheDir() string { return testenv.CacheDir() }

func ckptBinary(t *testing.T) string { t.Helper(); return testenv.StaticBinary(t, "./cmd/ckpt") }
