package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/spf13/pflag"
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

// TestConfigFilesAndFlags: ckpt.toml, then drop-ins in name order, then
// flags given on the command line; a backend's table is [backends.NAME]
// (or, as before, [NAME]) and its flags come from its registration.
func TestConfigFilesAndFlags(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "ckpt.toml.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "ckpt.toml"), []byte("region = \"/from/main\"\nconcurrency = 2\n[criu]\nrunc_root = \"/main/runc\"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "ckpt.toml.d", "10-site.toml"), []byte("concurrency = 3\n[backends.qemu]\npreserved_ram_dirs = [\"/mnt/dax\"]\nmax_bandwidth = 5\n"), 0o644)
	cfg, err := loadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	var f engineFlags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	f.add(fs)
	if err := fs.Parse([]string{"--region", "/from/flag", "--qmp-dir", "/flag/qmp"}); err != nil {
		t.Fatal(err)
	}
	cfg, err = f.backend.setTables(cfg)
	if err == nil {
		err = applyConfig(fs, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	if f.region != "/from/flag" || f.concurrency != 3 {
		t.Fatalf("flags after config: %+v", f)
	}
	got := f.backend.configs(map[string]map[string]any{"qemu": {"multifd_channels": -1}})
	want := map[string]map[string]any{
		"criu": {"runc_root": "/main/runc"},
		"qemu": {"preserved_ram_dirs": []any{"/mnt/dax"}, "max_bandwidth": int64(5), "socket_dir": "/flag/qmp", "multifd_channels": -1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("backend configs\n got %v\nwant %v", got, want)
	}
	for _, r := range hypervisors.Registered() {
		if _, err := r.DecodeConfig(got[r.Name]); err != nil {
			t.Fatalf("decoding %s: %v", r.Name, err)
		}
	}
	os.WriteFile(filepath.Join(dir, "ckpt.toml.d", "20-typo.toml"), []byte("regoin = \"x\"\n"), 0o644)
	cfg, _ = loadConfig(dir)
	cfg, _ = f.backend.setTables(cfg)
	if err := applyConfig(fs, cfg); err == nil || !strings.Contains(err.Error(), "regoin") {
		t.Fatalf("a typo in the config = %v; want an error naming it", err)
	}
	for _, r := range hypervisors.Registered() {
		if r.Name != "criu" {
			continue
		}
		if _, err := r.DecodeConfig(map[string]any{"runc_rot": "/x"}); err == nil || !strings.Contains(err.Error(), "runc_rot") {
			t.Fatalf("a typo in [backends.criu] = %v; want an error naming it", err)
		}
	}
}

// TestShippedConfigDecodes: the commented default /etc/ckpt/ckpt.toml of
// the package, uncommented, is valid for every registered backend.
func TestShippedConfigDecodes(t *testing.T) {
	b, err := os.ReadFile("../../contrib/etc/ckpt.toml")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "#"); ok && (strings.HasPrefix(rest, "[") || strings.Contains(rest, " = ")) {
			l = rest
		}
		lines = append(lines, l)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ckpt.toml"), []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	var f engineFlags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	f.add(fs)
	if cfg, err = f.backend.setTables(cfg); err == nil {
		err = applyConfig(fs, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range hypervisors.Registered() {
		if _, err := r.DecodeConfig(f.backend.configs(nil)[r.Name]); err != nil {
			t.Fatalf("%s: %v", r.Name, err)
		}
	}
}

// TestEveryVerbReadsBackendTables: status, which reads the config files
// on its own path, takes [backends.NAME] (and the older [NAME]) tables as
// the engine verbs do.
func TestEveryVerbReadsBackendTables(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ckpt.toml"), []byte("[backends.criu]\nprocess_trees = [\"/nosuch.service\"]\n[qemu]\nsocket_dir = \"/nosuch\"\n"), 0o644)
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"status", "--config-dir", dir, "--journal", filepath.Join(dir, "j.json"), "--resume-state", filepath.Join(dir, "r.json"), "--json"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("status with backend tables: %v\n%s", err, out.String())
	}
}

// TestFleetLockConfig: ckpt.toml's [fleet_lock] table sets suspend-all's
// and update's fleet lock; the command line overrides it key by key.
func TestFleetLockConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ckpt.toml"), []byte("[fleet_lock]\nurl = \"etcd://etcd1:2379,etcd2:2379\"\ngroup = \"web\"\nslots = 3\nttl = \"10m\"\n"), 0o644)
	cfg, err := loadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	var fl fleetFlags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fl.add(fs)
	if err := fs.Parse([]string{"--fleet-lock-group", "db"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(fs, cfg); err != nil {
		t.Fatal(err)
	}
	got := fl.config()
	if got == nil || got.URL != "etcd://etcd1:2379,etcd2:2379" || got.Group != "db" || got.Slots != 3 || got.TTLSeconds != 600 {
		t.Fatalf("fleet lock from config and flags: %+v", got)
	}
	var none fleetFlags
	none.add(pflag.NewFlagSet("y", pflag.ContinueOnError))
	if none.config() != nil {
		t.Fatal("a fleet lock without --fleet-lock")
	}
}

// TestBootUnitsFindTheCommittedRegion: the boot units' resume-all takes
// the region the committed journal names (a soft-reboot's in /run), does
// nothing on a host with no region and nothing committed, and fails
// loudly when the journal cannot be read or its region is gone.
func TestBootUnitsFindTheCommittedRegion(t *testing.T) {
	d := t.TempDir()
	j := filepath.Join(d, "journal.json")
	common := []string{"--journal", j, "--resume-state", filepath.Join(d, "resumed.json"), "--metrics-dir", d, "--config-dir", d,
		"--region", "/dev/ckpt-test-no-such-pmem"}
	boot := func(verb string) (string, error) {
		return run(t, append([]string{"resume-all", verb}, common...)...)
	}
	for _, verb := range []string{"--early", "--if-committed"} {
		if out, err := boot(verb); err != nil || !strings.Contains(out, "nothing to") {
			t.Errorf("resume-all %s without region or journal: %v\n%s", verb, err, out)
		}
	}
	region := filepath.Join(d, "run-region")
	if out, err := run(t, "region", "format", region); err != nil {
		t.Fatalf("region format: %v\n%s", err, out)
	}
	write := func(body string) {
		if err := os.WriteFile(j, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"state":"committed","region":"` + region + `"}`)
	out, err := boot("--if-committed")
	if err != nil || !strings.Contains(out, "resuming that one") || !strings.Contains(out, "nothing to resume") {
		t.Errorf("resume-all --if-committed with the journal naming %s (unsealed): %v\n%s", region, err, out)
	}
	write(`{"state":"committed","region":"` + filepath.Join(d, "gone") + `"}`)
	if out, err := boot("--if-committed"); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("resume-all with the committed region gone: %v\n%s", err, out)
	}
	write(`not json`)
	for _, verb := range []string{"--early", "--if-committed"} {
		if out, err := boot(verb); err == nil || !strings.Contains(err.Error(), "journal") {
			t.Errorf("resume-all %s with an unreadable journal: %v\n%s", verb, err, out)
		}
	}
}

// TestRestoreFlags: --lazy alone means all, --lazy=a,b names some, and
// [restore] in ckpt.toml sets both restore flags.
func TestRestoreFlags(t *testing.T) {
	parse := func(args ...string) engineFlags {
		var f engineFlags
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		f.addRestore(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := parse("--lazy"); fmt.Sprint(f.lazy) != "[all]" {
		t.Fatalf("--lazy = %v; want [all]", f.lazy)
	}
	if f := parse("--lazy=criu/web,vm"); fmt.Sprint(f.lazy) != "[criu/web vm]" {
		t.Fatalf("--lazy=criu/web,vm = %v", f.lazy)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ckpt.toml"), []byte("[restore]\nhuge_pages = true\nlazy = [\"criu\"]\n"), 0o644)
	cfg, err := loadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	var f engineFlags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	f.addRestore(fs)
	if err := applyConfig(fs, cfg); err != nil {
		t.Fatal(err)
	}
	if !f.hugePages || fmt.Sprint(f.lazy) != "[criu]" {
		t.Fatalf("[restore] in ckpt.toml: huge pages %v, lazy %v", f.hugePages, f.lazy)
	}
}
