package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
)

// PrepareResult says what Prepare did.
type PrepareResult struct {
	Committed bool     `json:"committed"`
	Prepared  []string `json:"prepared,omitempty"`
	Failed    []string `json:"failed,omitempty"`
}

// Prepare runs early in the boot of the new kernel, before the network and
// the usual services start (ckpt-resume-early.service): for every workload
// of the committed checkpoint it asks the workload's backend to prepare
// the boot for its restore (hypervisors.BootPreparer), e.g. to keep TCP
// peers from being reset and the pids a process tree needs free. It reads
// only the manifest and restores nothing; ResumeAll verifies the region
// later. A region with no committed checkpoint is a normal boot: nothing
// to do. A workload whose preparation fails is logged and the others go
// on; its restore may still work, and says why if it does not.
func Prepare(ctx context.Context, region string, backends []hypervisors.Backend, log *slog.Logger) (*PrepareResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := memregion.Open(region, memregion.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	res := &PrepareResult{}
	sealed, err := r.Sealed()
	if err != nil || !sealed {
		return res, err
	}
	m, err := r.Manifest()
	if err != nil {
		return nil, fmt.Errorf("region %s: %w (nothing was prepared or deleted)", region, err)
	}
	res.Committed = true
	byName := map[string]hypervisors.Backend{}
	for _, b := range backends {
		byName[b.Name()] = b
	}
	var errs []error
	for _, rec := range m.Workloads {
		k := rec.Backend + "/" + rec.ID
		bp, ok := byName[rec.Backend].(hypervisors.BootPreparer)
		if !ok {
			continue
		}
		t0 := time.Now()
		w := hypervisors.Workload{ID: rec.ID, Kind: rec.Kind, Backend: rec.Backend, MemoryBytes: rec.MemoryBytes}
		if err := bp.PrepareBoot(ctx, w, rec.Restore); err != nil {
			log.Error("preparing the boot for a restore", "workload", k, "err", err)
			res.Failed = append(res.Failed, k)
			errs = append(errs, err)
			continue
		}
		log.Info("prepared", "workload", k, "took", time.Since(t0).Round(time.Millisecond))
		res.Prepared = append(res.Prepared, k)
	}
	return res, errors.Join(errs...)
}
