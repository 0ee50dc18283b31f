package fleetlock_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

func etcdClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// The etcd semaphore against a real etcd: no more holders than slots, a
// holder that asks again keeps its slot, a released slot goes to the next.
func TestSemaphoreSlots(t *testing.T) {
	cli := etcdClient(t, workloads.StartEtcd(t))
	ctx := context.Background()
	sem := func(id string) *fleetlock.Semaphore {
		return fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "g", ID: id, Slots: 2})
	}
	for _, id := range []string{"a", "b", "a"} {
		if err := sem(id).TryAcquire(ctx); err != nil {
			t.Fatalf("TryAcquire %s: %v", id, err)
		}
	}
	if err := sem("c").TryAcquire(ctx); !errors.Is(err, fleetlock.ErrBusy) || !strings.Contains(err.Error(), "a, b") {
		t.Fatalf("TryAcquire c with 2 of 2 slots taken: %v; want ErrBusy naming a and b", err)
	}
	if err := sem("a").Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sem("a").Release(ctx); err != nil {
		t.Fatalf("a second release: %v", err)
	}
	if err := sem("c").TryAcquire(ctx); err != nil {
		t.Fatalf("TryAcquire c after a's release: %v", err)
	}
	// The slot count is the group's first holder's: a later host asking
	// for more does not get more.
	if err := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "g", ID: "d", Slots: 5}).TryAcquire(ctx); !errors.Is(err, fleetlock.ErrBusy) {
		t.Fatalf("TryAcquire d asking for 5 slots: %v; want ErrBusy (the group has 2)", err)
	}
	if slots, holders, err := sem("x").State(ctx); err != nil || slots != 2 || len(holders) != 2 || holders[0].ID != "b" || holders[1].ID != "c" {
		t.Fatalf("State = %d, %+v, %v; want 2 slots held by b and c", slots, holders, err)
	}
}

// Hosts racing for the slots never hold more than there are.
func TestSemaphoreRace(t *testing.T) {
	cli := etcdClient(t, workloads.StartEtcd(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const slots, hosts = 2, 6
	var now, peak atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, hosts)
	for i := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "race", ID: string(rune('a' + i)), Slots: slots, PollSeconds: 0.05})
			if err := s.Acquire(ctx); err != nil {
				errs <- err
				return
			}
			n := now.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(200 * time.Millisecond)
			now.Add(-1)
			errs <- s.Release(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p < 1 || p > slots {
		t.Fatalf("%d hosts held a slot at once; want 1 to %d", p, slots)
	}
}

// The slot of a holder that never gives it back expires with its lease.
func TestSemaphoreLeaseExpires(t *testing.T) {
	cli := etcdClient(t, workloads.StartEtcd(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	crashed := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "ttl", ID: "crashed", TTLSeconds: 2})
	if err := crashed.TryAcquire(ctx); err != nil {
		t.Fatal(err)
	}
	next := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "ttl", ID: "next", PollSeconds: 0.2})
	if err := next.TryAcquire(ctx); !errors.Is(err, fleetlock.ErrBusy) {
		t.Fatalf("TryAcquire while the crashed host holds the slot: %v", err)
	}
	start := time.Now()
	if err := next.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("the slot was free after %s, before the 2 s lease could expire", waited)
	}
}

// The FleetLock client against the FleetLock server on the etcd
// semaphore: the protocol's two calls, a refusal while the slot is taken,
// a request without the protocol header refused.
func TestFleetLockProtocol(t *testing.T) {
	cli := etcdClient(t, workloads.StartEtcd(t))
	srv := httptest.NewServer(fleetlock.NewServer(cli, 1, time.Hour))
	defer srv.Close()
	ctx := context.Background()
	open := func(id string) fleetlock.Slot {
		s, err := fleetlock.Open(ctx, fleetlock.Config{URL: srv.URL, Group: "web", ID: id, PollSeconds: 0.1})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := open("a"), open("b")
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := b.Acquire(short); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "failed_lock") {
		t.Fatalf("b's acquire while a holds the only slot: %v; want a timeout after failed_lock refusals", err)
	}
	if _, holders, _ := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "web", ID: "x"}).State(ctx); len(holders) != 1 || holders[0].ID != "a" {
		t.Fatalf("etcd holders: %+v; want a alone", holders)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.URL+fleetlock.PreRebootPath, "application/json", strings.NewReader(`{"client_params":{"id":"c","group":"web"}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a request without %s: %s", fleetlock.ProtocolHeader, resp.Status)
	}
}

// Take records the slot before taking it; Give gives it back and drops
// the record; a second Give does nothing.
func TestTakeGive(t *testing.T) {
	endpoint := workloads.StartEtcd(t)
	cli := etcdClient(t, endpoint)
	ctx := context.Background()
	record := filepath.Join(t.TempDir(), "fleetlock.json")
	cfg := fleetlock.Config{URL: "etcd://" + endpoint, Group: "tg", ID: "h1"}
	if err := fleetlock.Take(ctx, cfg, record); err != nil {
		t.Fatal(err)
	}
	if held, err := fleetlock.Held(record); err != nil || held == nil || held.ID != "h1" {
		t.Fatalf("Held = %+v, %v", held, err)
	}
	sem := fleetlock.NewSemaphore(cli, fleetlock.Config{Group: "tg", ID: "x"})
	if _, holders, _ := sem.State(ctx); len(holders) != 1 {
		t.Fatalf("holders after Take: %+v", holders)
	}
	for range 2 {
		if err := fleetlock.Give(ctx, record); err != nil {
			t.Fatal(err)
		}
	}
	if _, holders, _ := sem.State(ctx); len(holders) != 0 {
		t.Fatalf("holders after Give: %+v", holders)
	}
	if held, _ := fleetlock.Held(record); held != nil {
		t.Fatalf("record left after Give: %+v", held)
	}
}
