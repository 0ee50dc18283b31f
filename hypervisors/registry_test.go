package hypervisors

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type testConfig struct {
	Root  string   `json:"root"`
	Paths []string `json:"paths"`
	N     int      `json:"n"`
}

// TestRegistryDecodesTypedConfig: a backend registers a typed default
// config; Load decodes its table into it (TOML's int64 and []any
// included), refuses unknown keys and tables of backends that do not
// exist, and goes on without a backend that declines.
func TestRegistryDecodesTypedConfig(t *testing.T) {
	var got *testConfig
	Register(Registration{Name: "regtest", Config: func() any { return &testConfig{Root: "/default"} },
		Init: func(_ context.Context, ic InitContext) (Backend, error) {
			got = ic.Config.(*testConfig)
			return nil, ErrSkipBackend // decline: the test needs no backend
		}})
	_, skipped, err := Load(context.Background(), map[string]map[string]any{"regtest": {"paths": []any{"/a", "/b"}, "n": int64(3)}}, nil)
	if err != nil || skipped["regtest"] == nil {
		t.Fatalf("Load = %v, skipped %v", err, skipped)
	}
	if got.Root != "/default" || len(got.Paths) != 2 || got.N != 3 {
		t.Fatalf("config %+v", got)
	}
	_, _, err = Load(context.Background(), map[string]map[string]any{"regtest": {"rooot": "/x"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "rooot") {
		t.Fatalf("unknown key: %v", err)
	}
	_, _, err = Load(context.Background(), map[string]map[string]any{"nosuch": {}}, nil)
	if err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown backend: %v", err)
	}
	if errors.Is(err, ErrSkipBackend) {
		t.Fatal("an unknown backend's table is not a skip")
	}
}
