package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// The fast path (QEMU >= 8.2): a VM whose RAM is a shared
// memory-backend-file in a directory that survives the update (a DAX
// filesystem on the preserved region) is saved in cpr-reboot mode with
// x-ignore-shared. Guest RAM stays where it is; only device state is
// written, so the frozen time no longer grows with guest RAM.

// cpr records a VM saved with its RAM left in place.
type cpr struct {
	RAMFile string `json:"ram_file"`
	Size    int64  `json:"size"`
}

// ErrRAMNotPreserved is wrapped when a VM does not qualify for the
// RAM-in-place path; the error says what to change.
var ErrRAMNotPreserved = errors.New("guest RAM is not on preserved memory")

// preservedRAM returns the file holding the VM's RAM if it qualifies for
// cpr-reboot with RAM in place, else an error wrapping ErrRAMNotPreserved
// that tells the operator how to start the VM so it does.
func (b *Backend) preservedRAM(ctx context.Context, v *vm, memBytes int64) (*cpr, error) {
	how := func(why string) error {
		dir := "<preserved dir>"
		if len(b.cfg.PreservedRAMDirs) > 0 {
			dir = b.cfg.PreservedRAMDirs[0]
		}
		return fmt.Errorf("%w: %s; to keep RAM in place start QEMU >= 8.2 with "+
			"-object memory-backend-file,id=ram0,size=%d,mem-path=%s/%s.ram,share=on -machine memory-backend=ram0",
			ErrRAMNotPreserved, why, memBytes, dir, v.id)
	}
	if len(b.cfg.PreservedRAMDirs) == 0 {
		return nil, how("no preserved RAM directory is configured")
	}
	ver := v.mon.Version.QEMU
	if ver.Major < 8 || ver.Major == 8 && ver.Minor < 2 {
		return nil, how(fmt.Sprintf("QEMU %d.%d has no cpr-reboot mode", ver.Major, ver.Minor))
	}
	var id string
	if err := v.mon.Execute(ctx, "qom-get", map[string]string{"path": "/machine", "property": "memory-backend"}, &id); err != nil || id == "" {
		return nil, how("the machine's RAM is not a memory backend")
	}
	obj := id // QEMU 10 answers with the QOM path, older ones with the id
	if !strings.HasPrefix(obj, "/") {
		obj = "/objects/" + id
	}
	var path string
	if err := v.mon.Execute(ctx, "qom-get", map[string]string{"path": obj, "property": "mem-path"}, &path); err != nil {
		return nil, how(fmt.Sprintf("memory backend %q is not a file", id))
	}
	var share bool
	if err := v.mon.Execute(ctx, "qom-get", map[string]string{"path": obj, "property": "share"}, &share); err != nil || !share {
		return nil, how(fmt.Sprintf("memory backend %q is not share=on", id))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, how(fmt.Sprintf("RAM file %s: %v", path, err))
	}
	for _, d := range b.cfg.PreservedRAMDirs {
		rd, err := filepath.EvalSymlinks(d)
		if err == nil && strings.HasPrefix(real, rd+string(filepath.Separator)) {
			fi, err := os.Stat(real)
			if err != nil {
				return nil, how(err.Error())
			}
			return &cpr{RAMFile: real, Size: fi.Size()}, nil
		}
	}
	return nil, how(fmt.Sprintf("RAM file %s is not under a preserved directory %v", real, b.cfg.PreservedRAMDirs))
}

// setCPR switches cpr-reboot mode with x-ignore-shared on or off.
func setCPR(ctx context.Context, v *vm, on bool) error {
	mode := "normal"
	if on {
		mode = "cpr-reboot"
	}
	if err := v.mon.Execute(ctx, "migrate-set-capabilities", capabilities(on, "x-ignore-shared"), nil); err != nil {
		return err
	}
	return v.mon.Execute(ctx, "migrate-set-parameters", map[string]any{"mode": mode}, nil)
}

// migrateCPR saves the device state only; the RAM file stays.
func (b *Backend) migrateCPR(ctx context.Context, v *vm, dst hypervisors.ObjectSink) (*Migration, error) {
	if err := setCPR(ctx, v, true); err != nil {
		return nil, err
	}
	defer setCPR(context.WithoutCancel(ctx), v, false)
	return b.migrateStream(ctx, v, dst, 0)
}

// checkRAM refuses a restore whose preserved RAM file is gone or resized.
func (c *cpr) checkRAM() error {
	fi, err := os.Stat(c.RAMFile)
	if err != nil {
		return fmt.Errorf("preserved guest RAM: %w (is the region's filesystem mounted?)", err)
	}
	if fi.Size() != c.Size {
		return fmt.Errorf("preserved guest RAM %s is %d bytes, was %d", c.RAMFile, fi.Size(), c.Size)
	}
	return nil
}

// RAMInPlace says whether w's RAM would stay in place at suspend (nil)
// or be copied, and then why and how to start the VM so it stays.
func (b *Backend) RAMInPlace(ctx context.Context, w hypervisors.Workload) error {
	v, err := b.vmOf(ctx, w)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	wd, err := b.describe(ctx, v)
	if err != nil {
		return err
	}
	_, err = b.preservedRAM(ctx, v, wd.MemoryBytes)
	return err
}

// cprStateBytes is what a VM saved with its RAM in place writes, roughly:
// its device state and its small RAM blocks (video memory, ROMs), which
// do not grow with guest RAM.
const cprStateBytes = 32 << 20

var _ hypervisors.SizeEstimator = (*Backend)(nil)

// EstimateSize implements hypervisors.SizeEstimator: a VM whose RAM stays
// in place (cpr-reboot) writes its device state only, any other VM up to
// its RAM.
func (b *Backend) EstimateSize(ctx context.Context, w hypervisors.Workload) (int64, error) {
	if err := b.RAMInPlace(ctx, w); err != nil {
		return w.MemoryBytes, nil
	}
	return min(cprStateBytes, w.MemoryBytes), nil
}
