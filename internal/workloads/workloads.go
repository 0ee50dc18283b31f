// Package workloads starts the real workloads ckpt's tests suspend: runc
// containers and QEMU TCG guests running testload.
package workloads

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Seq numbers workloads within a test binary.
var Seq atomic.Int64

// GuestDataMiB is the pseudo-random memory a guest's init holds by default
// and re-checksums every two seconds.
const GuestDataMiB = 128

// bundle makes an OCI bundle with busybox and testload, sharing the host's
// network namespace so the test reaches testload's port.
func Bundle(t testing.TB, env []string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	cp := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rootfs, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp("/bin/busybox", "bin/busybox")
	cp(testenv.StaticBinary(t, "./internal/testload"), "bin/testload")
	for _, a := range []string{"sh", "sleep"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	runc := testenv.RequireTool(t, "runc")
	if out, err := exec.Command(runc, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	var spec specs.Spec
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Process.Env = append(spec.Process.Env, env...)
	spec.Root.Readonly = false
	var nss []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			nss = append(nss, ns)
		}
	}
	spec.Linux.Namespaces = nss
	b, _ = json.MarshalIndent(&spec, "", " ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Container is testload in a runc container in a runc container with its stdio on pipes.
type Container struct {
	ID, Root, Addr string
	Ticks          atomic.Int64 // last "tick N" read from its stdout pipe
}

// StartTimeout bounds how long a workload may take to answer.
// CKPT_START_TIMEOUT overrides it: under TCG (integration's
// TestCRIUInGuest) filling 1 GiB takes minutes.
var StartTimeout = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("CKPT_START_TIMEOUT")); err == nil {
		return d
	}
	return 30 * time.Second
}()

// Checkpointable is the environment of a Go workload CRIU can dump: Go
// >= 1.24 listens with MPTCP by default, and CRIU cannot dump MPTCP
// sockets ("Unsupported proto 262"); Go >= 1.25 keeps its cgroup's
// cpu.max open in a container with a CPU controller (container-aware
// GOMAXPROCS), which CRIU cannot dump either.
var Checkpointable = []string{"GODEBUG=multipathtcp=0,containermaxprocs=0"}

func StartContainer(t testing.TB, root string, env []string, memMiB int) *Container {
	t.Helper()
	return StartContainerArgs(t, root, env, memMiB)
}

// StartContainerArgs starts testload with more arguments, e.g. "-dirty",
// "64" for a workload that keeps writing its memory.
func StartContainerArgs(t testing.TB, root string, env []string, memMiB int, extra ...string) *Container {
	t.Helper()
	port := FreePort(t)
	c := &Container{ID: fmt.Sprintf("ckpt-test-%d-%d", os.Getpid(), Seq.Add(1)), Root: root, Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	args := append([]string{"/bin/testload", "-mem", strconv.Itoa(memMiB), "-listen", c.Addr}, extra...)
	dir := Bundle(t, env, args...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "run", "--detach", "--bundle", dir, c.ID)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	pw.Close()
	go c.Drain(pr)
	t.Cleanup(func() {
		exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "delete", "--force", c.ID).Run()
	})
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if _, err := c.Ask("tick"); err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("container %s did not answer on %s", c.ID, c.Addr)
	return nil
}

// drain keeps reading the container's stdout pipe, as a shim would, and
// remembers the last tick.
func (c *Container) Drain(f *os.File) {
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, ok := ParseTick(sc.Text()); ok {
			c.Ticks.Store(n)
		}
	}
}

func ParseTick(line string) (int64, bool) {
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "tick ")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// ask sends one command on a fresh connection and returns the answer.
func (c *Container) Ask(cmd string) (string, error) {
	conn, err := net.DialTimeout("tcp", c.Addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// guestKernel is the Debian 6.1 kernel hack/setup.sh unpacks.
func GuestKernel(t testing.TB) string {
	t.Helper()
	vm, _ := filepath.Glob(filepath.Join(testenv.CacheDir(), "kernels", "6.1", "boot", "vmlinuz-*"))
	if len(vm) != 1 {
		testenv.Missing(t, "Debian 6.1 guest kernel not unpacked under %s (run hack/setup.sh)", testenv.CacheDir())
	}
	return vm[0]
}

var (
	initrdOnce sync.Once
	initrdPath string
	initrdErr  error
)

// GuestInitrd is an initramfs whose /init is testload in guest mode.
func GuestInitrd(t testing.TB) string {
	t.Helper()
	bin := testenv.StaticBinary(t, "./internal/testload")
	initrdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ckpt-guest-")
		if err != nil {
			initrdErr = err
			return
		}
		root := filepath.Join(dir, "root")
		os.MkdirAll(filepath.Join(root, "dev"), 0o755)
		b, err := os.ReadFile(bin)
		if err == nil {
			err = os.WriteFile(filepath.Join(root, "init"), b, 0o755)
		}
		if err != nil {
			initrdErr = err
			return
		}
		initrdPath = filepath.Join(dir, "initrd.cpio")
		cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+initrdPath)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			initrdErr = fmt.Errorf("cpio: %v: %s", err, out)
		}
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdPath
}

// guest is one QEMU VM started by a test.
type Guest struct {
	ID, Socket, Console string
}

// startGuest boots a TCG VM with QMP on a socket in sockDir.
func StartGuest(t testing.TB, emulator, sockDir string, memMiB int) *Guest {
	t.Helper()
	return StartGuestData(t, emulator, sockDir, memMiB, GuestDataMiB)
}

// startGuestData boots a guest whose init holds dataMiB of data; extra
// are more QEMU arguments.
func StartGuestData(t testing.TB, emulator, sockDir string, memMiB, dataMiB int, extra ...string) *Guest {
	t.Helper()
	testenv.RequireTool(t, "cpio")
	g := &Guest{ID: fmt.Sprintf("ckpt-vm-%d-%d", os.Getpid(), Seq.Add(1))}
	g.Socket = filepath.Join(sockDir, g.ID+".qmp")
	g.Console = filepath.Join(t.TempDir(), "console.log")
	cmdline := GuestCmdline(dataMiB)
	args := []string{"-name", "guest=" + g.ID, "-machine", "pc", "-m", strconv.Itoa(memMiB) + "M", "-nodefaults", "-display", "none",
		"-no-reboot", "-kernel", GuestKernel(t), "-initrd", GuestInitrd(t), "-append", cmdline, "-smp", "1",
		"-chardev", "file,id=ser0,path=" + g.Console + ",append=on", "-serial", "chardev:ser0",
		"-qmp", "unix:" + g.Socket + ",server=on,wait=off"}
	args = append(args, extra...)
	cmd := exec.Command(emulator, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { KillBySocket(g.Socket) })
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if g.Ticks() > 0 {
			return g
		}
		select {
		case err := <-exited:
			t.Fatalf("QEMU exited: %v: %s", err, stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	b, _ := os.ReadFile(g.Console)
	t.Fatalf("guest %s did not start ticking; console:\n%s", g.ID, TailLines(string(b), 20))
	return nil
}

// GuestCmdline is the kernel command line of a test guest whose init
// (testload) holds dataMiB of checksummed data and ticks on ttyS0.
func GuestCmdline(dataMiB int) string {
	return fmt.Sprintf("console=ttyS0 quiet panic=-1 rdinit=/init -- -guest -child= -listen= -mem %d -tick 100ms -sum-every 2s", dataMiB)
}

// killBySocket ends every QEMU whose command line names socket (the
// original and any relaunched one).
func KillBySocket(socket string) {
	ps, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range ps {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), socket) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

func TailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ticks is the last counter value on the serial console.
func (g *Guest) Ticks() int64 {
	f, err := os.Open(g.Console)
	if err != nil {
		return 0
	}
	defer f.Close()
	var n int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "tick "); ok {
			if x, err := strconv.ParseInt(v, 10, 64); err == nil && x > n {
				n = x
			}
		}
	}
	return n
}
