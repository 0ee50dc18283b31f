package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestDemo(t *testing.T) {
	out, err := run(t, "demo", "--region-only", "--dir", t.TempDir(), "--size", "32M")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"write", "verify", "refused", "region OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"region", "verify"}, {"region", "plan", "--size", "lots"}, {"demo", "--nope"}} {
		_, err := run(t, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("ckpt %v: error %v is not a usage error (exit 2)", args, err)
		}
	}
}

func TestRegionCommands(t *testing.T) {
	dir := t.TempDir() + "/r"
	for _, args := range [][]string{
		{"region", "format", "--kind", "raw", "--size", "64M", dir},
		{"region", "selftest", "write", "--objects", "2", "--size", "1M", dir},
		{"region", "verify", dir},
		{"region", "selftest", "check", dir},
	} {
		if out, err := run(t, args...); err != nil {
			t.Fatalf("ckpt %v: %v\n%s", args, err, out)
		}
	}
	// A sealed region is not formatted over, and --expect-new-boot fails in
	// the boot that wrote it.
	if _, err := run(t, "region", "format", dir); err == nil {
		t.Fatal("format over a sealed region succeeded")
	}
	if _, err := run(t, "region", "selftest", "check", "--expect-new-boot", dir); err == nil {
		t.Fatal("--expect-new-boot passed in the same boot")
	}
	out, err := run(t, "--json", "region", "inspect", dir)
	if err != nil || !strings.Contains(out, `"sealed": true`) {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	if _, err := run(t, "region", "release", dir); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, "region", "inspect", dir); !strings.Contains(out, "state: empty") {
		t.Fatalf("after release:\n%s", out)
	}
}
