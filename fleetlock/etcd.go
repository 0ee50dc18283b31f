package fleetlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// KeyPrefix is where the semaphores live in etcd: under it, each group's
// slot count (GROUP/max), its generation (GROUP/gen, changed by every
// acquire) and its holders (GROUP/holders/ID, each on its own lease).
const KeyPrefix = "/ckpt/fleetlock/"

// Semaphore is a group's counting semaphore in etcd.
type Semaphore struct {
	cli    *clientv3.Client
	own    bool // cli is closed with the semaphore
	group  string
	slots  int
	ttl    int64
	poll   time.Duration
	holder string
}

// Holder is a holder's record in etcd.
type Holder struct {
	ID    string    `json:"id"`
	Since time.Time `json:"since"`
}

func openEtcd(ctx context.Context, c Config, endpoints []string) (*Semaphore, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	s := NewSemaphore(cli, c)
	s.own = true
	return s, nil
}

// NewSemaphore is c's group's semaphore through cli, held as c.ID.
func NewSemaphore(cli *clientv3.Client, c Config) *Semaphore {
	c = c.WithDefaults()
	return &Semaphore{cli: cli, group: c.Group, slots: c.Slots, ttl: c.TTLSeconds, poll: c.poll(), holder: c.ID}
}

func (s *Semaphore) key(k string) string { return KeyPrefix + s.group + "/" + k }

// Close implements Slot.
func (s *Semaphore) Close() error {
	if s.own {
		return s.cli.Close()
	}
	return nil
}

// State is a group's slot count and holders
// (a group no host has joined yet has this semaphore's slot count). It
// writes nothing.
func (s *Semaphore) State(ctx context.Context) (slots int, holders []Holder, err error) {
	slots, holders, _, err = s.state(ctx)
	return slots, holders, err
}

func (s *Semaphore) state(ctx context.Context) (slots int, holders []Holder, gen int64, err error) {
	slots = s.slots
	resp, err := s.cli.Get(ctx, s.key(""), clientv3.WithPrefix())
	if err != nil {
		return 0, nil, 0, fmt.Errorf("etcd: %w", err)
	}
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), s.key(""))
		switch {
		case k == "max":
			if slots, err = strconv.Atoi(string(kv.Value)); err != nil || slots < 0 {
				return 0, nil, 0, fmt.Errorf("etcd %s: %q is no slot count", kv.Key, kv.Value)
			}
		case k == "gen":
			gen = kv.ModRevision
		case strings.HasPrefix(k, "holders/"):
			h := Holder{ID: strings.TrimPrefix(k, "holders/")}
			json.Unmarshal(kv.Value, &h)
			holders = append(holders, h)
		}
	}
	sort.Slice(holders, func(i, j int) bool { return holders[i].ID < holders[j].ID })
	return slots, holders, gen, nil
}

// TryAcquire takes a slot if one is free (nil), or says ErrBusy; holding
// one already is success.
func (s *Semaphore) TryAcquire(ctx context.Context) error {
	// The group's slot count is set by its first holder.
	if _, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(s.key("max")), "=", 0)).
		Then(clientv3.OpPut(s.key("max"), strconv.Itoa(s.slots))).Commit(); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	for {
		slots, holders, gen, err := s.state(ctx)
		if err != nil {
			return err
		}
		var ids []string
		for _, h := range holders {
			if h.ID == s.holder {
				return nil
			}
			ids = append(ids, h.ID)
		}
		if len(holders) >= slots {
			return fmt.Errorf("%w (%d of %d, held by %s)", ErrBusy, len(holders), slots, strings.Join(ids, ", "))
		}
		lease, err := s.cli.Grant(ctx, s.ttl)
		if err != nil {
			return fmt.Errorf("etcd lease: %w", err)
		}
		rec, _ := json.Marshal(Holder{ID: s.holder, Since: time.Now().UTC()})
		// Only if no other holder came in since the count: every acquire
		// changes the generation.
		t, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.key("gen")), "=", gen)).
			Then(clientv3.OpPut(s.key("gen"), s.holder), clientv3.OpPut(s.key("holders/"+s.holder), string(rec), clientv3.WithLease(lease.ID))).Commit()
		if err == nil && t.Succeeded {
			return nil
		}
		s.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		// Another host changed the group meanwhile: count again.
	}
}

// Acquire implements Slot: TryAcquire until a slot is free.
func (s *Semaphore) Acquire(ctx context.Context) error {
	for {
		err := s.TryAcquire(ctx)
		if !errors.Is(err, ErrBusy) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(s.poll):
		}
	}
}

// Release implements Slot: the holder's key goes with its lease.
func (s *Semaphore) Release(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.key("holders/"+s.holder))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	for _, kv := range resp.Kvs {
		if kv.Lease != 0 {
			if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
				continue
			}
		}
		if _, err := s.cli.Delete(ctx, string(kv.Key)); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
	}
	return nil
}
