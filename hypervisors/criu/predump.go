package criu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

var _ hypervisors.PreDumper = (*Runtime)(nil)

const predumpPrefix = "predump/"

// predump is a pre-dump the next Dump of the same workload builds on.
type predump struct {
	dir     string // where its images are (in the region, or staging)
	staging string // staging dir to remove afterwards, "" if in the region
	names   []string
}

type predumps struct {
	mu sync.Mutex
	m  map[string]*predump
}

func (p *predumps) take(id string) *predump {
	p.mu.Lock()
	defer p.mu.Unlock()
	pd := p.m[id]
	delete(p.m, id)
	return pd
}

func (p *predumps) put(id string, pd *predump) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*predump{}
	}
	if old := p.m[id]; old != nil && old.staging != "" {
		os.RemoveAll(old.staging)
	}
	p.m[id] = pd
}

// drop forgets a pre-dump (rollback or finish).
func (p *predumps) drop(id string) {
	if pd := p.take(id); pd != nil && pd.staging != "" {
		os.RemoveAll(pd.staging)
	}
}

// PreDump copies the running container's memory into dst (runc checkpoint
// --pre-dump) and starts CRIU's dirty-page tracking, so the next Dump,
// made while frozen, writes only the pages changed since.
func (r *Runtime) PreDump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) error {
	if isTree(w) {
		return fmt.Errorf("pre-dump of %s: %w: pre-dump is implemented for containers only", w.ID, hypervisors.ErrNotSupported)
	}
	if !r.memTrack {
		return fmt.Errorf("pre-dump of %s: %w: CRIU reports no dirty memory tracking (the kernel needs CONFIG_MEM_SOFT_DIRTY)",
			w.ID, hypervisors.ErrNotSupported)
	}
	dir, err := r.stage(w.ID, "predump")
	if err != nil {
		return err
	}
	img, work := filepath.Join(dir, "images"), filepath.Join(dir, "work")
	img, direct := imageDir(dst, predumpPrefix, img)
	start := time.Now()
	_, err = r.runcCRIU(ctx, r.tasks(ctx, w), nil, "checkpoint", "--pre-dump", "--image-path", img, "--work-path", work, w.ID)
	if err != nil {
		cerr := newCRIUError("pre-dump", w.ID, filepath.Join(work, "dump.log"), err)
		os.RemoveAll(dir)
		if direct {
			os.RemoveAll(img)
		}
		return cerr
	}
	pd := &predump{dir: img}
	if direct {
		os.RemoveAll(dir)
		pd.names, _, err = hypervisors.AdoptDir(ctx, img, predumpPrefix, dst.(hypervisors.DirectSink))
	} else {
		pd.staging = dir
		pd.names, _, err = hypervisors.StoreDir(ctx, img, predumpPrefix, dst)
	}
	if err != nil {
		return fmt.Errorf("storing pre-dump of %s: %w", w.ID, err)
	}
	r.log.Debug("pre-dumped", "workload", w.ID, "took", time.Since(start))
	r.pre.put(w.ID, pd)
	return nil
}
