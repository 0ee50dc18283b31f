package criu

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

func TestOperatorOptions(t *testing.T) {
	opts := map[string][]string{"web-*": {"--tcp-close", "ext-unix-sk"}, "db": {"external mnt[]:m"}, "*": {"skip-in-flight"}}
	n := criuNeeds{LinkRemap: true}.withOptions(opts, "web-1")
	want := []string{"link-remap", "skip-in-flight", "tcp-close", "ext-unix-sk"}
	if got := n.configLines(); !slices.Equal(got, want) {
		t.Fatalf("config lines %q; want %q", got, want)
	}
	env, err := n.configEnv(t.TempDir())
	if err != nil || len(env) == 0 || !strings.HasPrefix(env[len(env)-1], "CRIU_CONFIG_FILE=") {
		t.Fatalf("configEnv = %v, %v", env, err)
	}
	b, _ := os.ReadFile(strings.TrimPrefix(env[len(env)-1], "CRIU_CONFIG_FILE="))
	if string(b) != strings.Join(want, "\n")+"\n" {
		t.Fatalf("config file %q", b)
	}
	if env, _ := (criuNeeds{FileLocks: true}).configEnv(t.TempDir()); env != nil {
		t.Fatal("a config file for what runc has a flag for")
	}
	for _, bad := range []string{"--images-dir /tmp", "leave-running", "config=/etc/x", "action-script /bin/sh"} {
		if err := validOption(bad); !errors.Is(err, hypervisors.ErrNotCheckpointable) {
			t.Errorf("option %q accepted", bad)
		}
	}
	if err := validOption("tcp-close"); err != nil {
		t.Error(err)
	}
}
