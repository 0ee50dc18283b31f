package update

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckPaths: every precheck path, from fakes of the host facts.
func TestCheckPaths(t *testing.T) {
	k612 := Kernel{Version: "6.12.95+deb12-amd64", Source: "GRUB: GRUB_DEFAULT=0"}
	k61 := Kernel{Version: "6.1.0-56-amd64"}
	for _, tc := range []struct {
		name   string
		f      Facts
		target Kernel
		path   Path
		soft   bool
		due    bool
		reason string
	}{
		{"nothing", Facts{Running: "6.1.0-56-amd64", SystemdVersion: 252}, k61, PathNone, false, false, "No action required"},
		{"new kernel", Facts{Running: "6.1.0-56-amd64"}, k612, PathKexec, false, true, "GRUB_DEFAULT=0"},
		{"livepatched", Facts{Running: "6.1.0-56-amd64", Livepatches: []string{"kpatch_cve"}, LivepatchCovers: true}, k612, PathLivepatched, false, false, "kpatch_cve"},
		{"ksplice's effective kernel is the target", Facts{Running: "6.1.0-56-amd64", LivepatchEffective: "6.12.95+deb12-amd64"}, k612, PathLivepatched, false, false, "effective kernel 6.12.95"},
		{"ksplice's effective kernel is older", Facts{Running: "6.1.0-56-amd64", LivepatchEffective: "6.1.0-57-amd64"}, k612, PathKexec, false, true, "a new kernel"},
		{"live patches alone prove nothing", Facts{Running: "6.1.0-56-amd64", Livepatches: []string{"kpatch_cve"}}, k612, PathKexec, false, true, "a new kernel"},
		{"no kexec", Facts{Running: "6.1.0-56-amd64", KexecProblem: "kexec_load_disabled"}, k612, PathReboot, false, true, "kexec_load_disabled"},
		{"userspace, systemd 257", Facts{Running: "6.1.0-56-amd64", RebootRequired: true, RebootPackages: []string{"libc6"}, SystemdVersion: 257}, k61, PathUserspace, true, true, "libc6"},
		{"userspace, systemd 252", Facts{Running: "6.1.0-56-amd64", RebootRequired: true, SystemdVersion: 252}, k61, PathUserspace, false, true, "kexec into the same kernel"},
		{"userspace, no kexec", Facts{Running: "6.1.0-56-amd64", RebootRequired: true, SystemdVersion: 252, KexecProblem: "lockdown"}, k61, PathReboot, false, true, "lockdown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Check(tc.f, tc.target)
			if p.Path != tc.path || p.SoftReboot != tc.soft || p.Due() != tc.due || !strings.Contains(p.Reason, tc.reason) || len(p.Steps) == 0 {
				t.Fatalf("Check = %+v; want path %s soft %v due %v reason with %q", p, tc.path, tc.soft, tc.due, tc.reason)
			}
		})
	}
}

func TestHostFactsAndClear(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "run"), 0o755)
	os.MkdirAll(filepath.Join(root, "sys/kernel/livepatch/lp1"), 0o755)
	os.WriteFile(filepath.Join(root, "run/reboot-required"), []byte("*** System restart required ***\n"), 0o644)
	os.WriteFile(filepath.Join(root, "run/reboot-required.pkgs"), []byte("linux-image-6.12.95+deb12-amd64\nlibc6\n"), 0o644)
	os.WriteFile(filepath.Join(root, "sys/kernel/livepatch/lp1/enabled"), []byte("1\n"), 0o644)
	f := HostFacts(root)
	if f.Running == "" || !f.RebootRequired || len(f.RebootPackages) != 2 || len(f.Livepatches) != 1 || f.LivepatchCovers {
		t.Fatalf("facts %+v", f)
	}
	if err := ClearRebootRequired(root); err != nil {
		t.Fatal(err)
	}
	if HostFacts(root).RebootRequired {
		t.Fatal("reboot-required kept")
	}
	if parseSystemdVersion("systemd 252 (252.36-1~deb12u1)\n+PAM +AUDIT") != 252 || parseSystemdVersion("nope") != 0 {
		t.Fatal("systemd version")
	}
}
