package checkpoint

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/internal/atomicfile"
	"github.com/ckpt-dev/ckpt/memregion"
)

// lastRun is the throughput of the last suspend (or dry run, as ckpt bench
// makes), kept beside the journal so the next plan can estimate how long
// workloads stay frozen.
type lastRun struct {
	Time        time.Time `json:"time"`
	Bytes       int64     `json:"bytes"`
	DumpGBps    float64   `json:"dump_gbps"`
	Concurrency int       `json:"concurrency"`
	DryRun      bool      `json:"dry_run"`
}

func lastRunPath(journal string) string {
	return filepath.Join(filepath.Dir(journal), "last-suspend.json")
}

func saveLastRun(journal string, r lastRun) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(lastRunPath(journal), b, 0o600)
}

// estimateFrozen fills the plan's frozen-time estimate: the bytes to dump
// at the last measured dump rate, or, before any, at memcpy bandwidth (a
// lower bound).
func (p *Plan) estimateFrozen() {
	var last lastRun
	if b, err := os.ReadFile(lastRunPath(p.Options.Journal)); err == nil && json.Unmarshal(b, &last) == nil && last.DumpGBps > 0 {
		p.EstimatedFrozenS = float64(p.Bytes) / (last.DumpGBps * 1e9)
		what := "suspend-all"
		if last.DryRun {
			what = "dry run (ckpt bench)"
		}
		p.EstimateBasis = fmt.Sprintf("%.2f GB/s measured by the last %s, %s", last.DumpGBps, what, last.Time.Format(time.RFC3339))
		return
	}
	best := 0.0
	_, ms := MeasureConcurrency(1)
	for _, m := range ms {
		best = max(best, m.GBps)
	}
	if best > 0 {
		p.EstimatedFrozenS = float64(p.Bytes) / (best * 1e9)
		p.EstimateBasis = fmt.Sprintf("lower bound: memcpy at %.1f GB/s; no dump measured yet (run ckpt bench)", best)
	}
}

// checkKexec is the preflight of the kernel a suspend will kexec into.
func (p *Plan) checkKexec() {
	img := p.Options.Kexec
	if img == nil {
		return
	}
	if err := kexec.Check(); err != nil {
		p.Problems = append(p.Problems, fmt.Sprintf("kexec: %v; %s", err, kexec.Fallback))
	}
	for _, f := range []string{img.Kernel, img.Initrd} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			p.Problems = append(p.Problems, fmt.Sprintf("target kernel: %v", err))
		}
	}
	if mode := kexec.Lockdown(); mode != "" && mode != "none" {
		p.Warnings = append(p.Warnings, fmt.Sprintf("kernel lockdown (%s): kexec loads only a kernel signed with a key this kernel trusts (Debian's signed linux-image packages are); if the load is refused, %s", mode, kexec.Fallback))
	}
	// A region in reserved RAM (a pmem device, or a filesystem on one)
	// is there after the kexec only if the next command line reserves it.
	if sv, err := memregion.Survives(p.Options.Region); err == nil && sv.KeepCmdline == "memmap=" {
		if _, ok := kexec.Param(img.Cmdline, "memmap"); !ok {
			p.Problems = append(p.Problems, fmt.Sprintf("the next kernel's command line has no memmap=: region %s would not be reserved after the kexec and its contents would be lost", p.Options.Region))
		}
	}
}
