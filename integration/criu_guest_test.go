package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// criuGuestInit is /init of the guest TestCRIUInGuest boots. First it
// moves itself onto a tmpfs (runc's pivot_root cannot leave the initramfs'
// rootfs), then it mounts cgroup v2 alone, loads the socket-diag modules
// CRIU dumps sockets with, and runs the criu backend's test binary with
// the arguments in /testbin/args.
const criuGuestInit = `#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "CKPT-$*"; }
if [ "$1" != stage2 ]; then
	/bin/busybox --install -s /bin
	mount -t proc proc /proc
	mkdir -p /newroot && mount -t tmpfs -o size=90% tmpfs /newroot
	for d in bin lib lib64 usr opt testbin init; do cp -a /$d /newroot/; done
	umount /proc
	exec switch_root /newroot /init stage2
	say "RESULT: FAIL (switch_root)"
fi
mkdir -p /proc /sys /dev /tmp /run /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts && mount -t tmpfs -o size=85% tmpfs /dev/shm && mount -t devpts devpts /dev/pts
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in inet_diag tcp_diag udp_diag raw_diag unix_diag netlink_diag af_packet_diag nfnetlink tun veth; do
	insmod /lib/modules/$m.ko || say "INSMOD-FAILED $m"
done
say "GUEST kernel $(uname -r), cgroup fs $(awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/mounts), $(nproc) cpus, $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB"
criu --version | head -1
criu check --feature mem_dirty_track && say "SOFT-DIRTY yes"
cd /testbin
CKPT_TESTBIN_DIR=/testbin CKPT_START_TIMEOUT=10m ./criu.test -test.v -test.count=1 $(cat /testbin/args)
rc=$?
if [ $rc = 0 ]; then say "RESULT: PASS"; else say "RESULT: FAIL (criu.test exit $rc)"; fi
sync
poweroff -f
`

// criuGuestRun is what TestCRIUInGuest runs: the conformance suite on
// cgroup v2 (with its pre-dump round trips), a container that keeps
// writing across a pre-dump, and the pre-dump benchmark.
var criuGuestRun = []string{
	"-test.timeout", "40m",
	"-test.run", "^(TestConformance|TestPreDumpKeepsLaterWrites|TestProcessTreeConformance)$",
	"-test.bench", "^BenchmarkPreDump$", "-test.benchtime", "1x",
}

// TestCRIUInGuest runs the criu backend's own tests inside a QEMU guest
// on Debian 12's kernel, for what this host cannot show: its kernel lacks
// CONFIG_MEM_SOFT_DIRTY, so CRIU cannot pre-dump here, and it runs cgroup
// v1, while the guest mounts cgroup v2 alone. The guest gets CRIU 4.2.1
// as installed by hack/setup.sh, the host's runc and its libraries, and
// statically built test binaries.
func TestCRIUInGuest(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	k := findGuestKernel(t, "6.1")
	root := filepath.Join(t.TempDir(), "root")
	files := map[string]string{
		"bin/busybox":         "/bin/busybox",
		"testbin/testload":    testenv.StaticBinary(t, "./internal/testload"),
		"testbin/criu.test":   staticTestBinary(t, "./hypervisors/criu"),
		"usr/local/sbin/criu": requireTool(t, "criu"),
	}
	// runc, and GNU tar and gzip, which CRIU runs to save the
	// container's tmpfs mounts (busybox tar lacks its options).
	for dst, bin := range map[string]string{"usr/sbin/runc": requireTool(t, "runc"), "usr/bin/tar": "/bin/tar", "usr/bin/gzip": "/bin/gzip"} {
		files[dst] = bin
		for _, lib := range sharedLibs(t, bin) {
			files[strings.TrimPrefix(lib, "/")] = lib
		}
	}
	// What CRIU's kernel probing (kerndat) and socket dumping need
	// (without nfnetlink, kerndat's nftables probe fails and CRIU refuses
	// to run).
	for _, m := range []string{"net/ipv4/inet_diag", "net/ipv4/tcp_diag", "net/ipv4/udp_diag", "net/ipv4/raw_diag",
		"net/unix/unix_diag", "net/netlink/netlink_diag", "net/packet/af_packet_diag",
		"net/netfilter/nfnetlink", "drivers/net/tun", "drivers/net/veth"} {
		files["lib/modules/"+filepath.Base(m)+".ko"] = filepath.Join(k.Modules, "kernel", m+".ko")
	}
	stageTree(t, root, files)
	// CRIU's own tree (its glibc and libraries), as the wrapper expects it.
	os.MkdirAll(filepath.Join(root, "opt", "ckpt"), 0o755)
	if out, err := exec.Command("cp", "-a", "/opt/ckpt/criu", filepath.Join(root, "opt", "ckpt")).CombinedOutput(); err != nil {
		t.Fatalf("copy /opt/ckpt/criu: %v: %s", err, out)
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "etc", "lib64"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(criuGuestInit), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "testbin", "args"), []byte(strings.Join(criuGuestRun, " ")), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	cpio(t, root, initrd, false)

	// Two vCPUs (multi-threaded TCG) so the workload writes while CRIU
	// pre-dumps it; -cpu max for SSE4.2's CRC32 in testload.
	console := bootGuest(t, qemu7, k, initrd, "8G", "console=ttyS0 quiet panic=-1", 45*time.Minute,
		"-smp", "2", "-cpu", "max")
	// The whole console is kept for whoever reads a failure.
	keep := filepath.Join(os.TempDir(), "ckpt-criu-guest-console.log")
	if err := os.WriteFile(keep, []byte(console), 0o644); err == nil {
		t.Logf("guest console: %s", keep)
	}
	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "CKPT-") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "Benchmark") || strings.Contains(l, "predump_test.go") {
			t.Log(strings.TrimSpace(l))
		}
	}
	for _, want := range []string{
		"cgroup fs cgroup2,", "CKPT-SOFT-DIRTY yes",
		"--- PASS: TestConformance/PreDumpRoundTrip/dir",
		"--- PASS: TestConformance/PreDumpRoundTrip/raw",
		"--- PASS: TestPreDumpKeepsLaterWrites",
		"--- PASS: TestProcessTreeConformance",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("guest console lacks %q", want)
		}
	}
	for _, b := range []string{"all", "hot128MiB"} {
		if !regexp.MustCompile(`BenchmarkPreDump/mem=1024MiB/writes=` + b + `.*frozen-ratio`).MatchString(console) {
			t.Errorf("guest console lacks the 1 GiB pre-dump benchmark, writes=%s", b)
		}
	}
	expectResult(t, console, "PASS")
}

// staticTestBinary compiles pkg's tests into a static binary.
func staticTestBinary(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg)+".test")
	cmd := exec.Command("go", "test", "-c", "-trimpath", "-o", out, pkg)
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", pkg, err, b)
	}
	return out
}

// sharedLibs lists the libraries (and the loader) a dynamic binary needs,
// as ldd resolves them on this host.
func sharedLibs(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	var libs []string
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") {
			libs = append(libs, f)
		}
	}
	return libs
}
