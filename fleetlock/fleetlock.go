// Package fleetlock takes a reboot slot from a fleet-wide lock service
// before an update and gives it back once every workload has resumed, so
// that no more hosts of a group than it has slots update at once (one
// host at a time behind a load balancer, say).
//
// Two lock services are spoken:
//
//   - etcd (URL etcd://HOST:PORT[,HOST:PORT…]): a counting semaphore in
//     etcd, the design of CoreOS's locksmith (a group, a slot count, holder
//     ids), with each holder's key on an etcd lease, so that the slot of a
//     host that never comes back expires;
//   - FleetLock (URL http://… or https://…): the HTTP protocol of Fedora
//     CoreOS's Zincati (POST /v1/pre-reboot, /v1/steady-state), so that
//     existing FleetLock servers (airlock) hand out the slots. NewServer is
//     such a server on the etcd semaphore.
//
// The slot a host holds is recorded on disk (Record) from before it is
// taken until it is given back: a suspend that rolls back, ckpt recover,
// and the resume at the next successful boot give it back (Give), so that
// it is never leaked.
package fleetlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/internal/atomicfile"
)

// DefaultGroup is the group of hosts sharing the slots when none is given.
const DefaultGroup = "default"

// DefaultTTL is how long an etcd slot outlives a holder that never gives
// it back: longer than a whole update (suspend, boot, resume).
const DefaultTTL = time.Hour

// Config says where a host takes its reboot slot.
type Config struct {
	// URL is the lock service: etcd://HOST:PORT[,HOST:PORT…] or a FleetLock
	// server's http(s)://… base URL.
	URL string `json:"url"`
	// Group is the group of hosts sharing the slots (default "default").
	Group string `json:"group,omitempty"`
	// ID is this host's holder id (default: /etc/machine-id, else the
	// host name).
	ID string `json:"id,omitempty"`
	// Slots is the etcd group's slot count, set by the group's first
	// holder (default 1); a FleetLock server has its own.
	Slots int `json:"slots,omitempty"`
	// TTLSeconds is the etcd lease of a holder (default DefaultTTL).
	TTLSeconds int64 `json:"ttl_s,omitempty"`
	// PollSeconds is how often a waiting host asks again (default 5).
	PollSeconds float64 `json:"poll_s,omitempty"`
}

// WithDefaults fills in the defaults.
func (c Config) WithDefaults() Config {
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.ID == "" {
		c.ID = hostID()
	}
	if c.Slots <= 0 {
		c.Slots = 1
	}
	if c.TTLSeconds <= 0 {
		c.TTLSeconds = int64(DefaultTTL / time.Second)
	}
	if c.PollSeconds <= 0 {
		c.PollSeconds = 5
	}
	return c
}

func (c Config) poll() time.Duration { return time.Duration(c.PollSeconds * float64(time.Second)) }

func hostID() string {
	if b, err := os.ReadFile("/etc/machine-id"); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
}

// Slot is one host's reboot slot in one lock service.
type Slot interface {
	// Acquire returns once this host holds a slot (at once when it holds
	// one already), or ctx's error; it asks again while the slots are
	// taken.
	Acquire(ctx context.Context) error
	// Release gives the slot back; giving back a slot not held is not an
	// error.
	Release(ctx context.Context) error
	// Close drops the connection to the service, not the slot.
	Close() error
}

// ErrBusy says every slot is taken (TryAcquire, and the FleetLock
// server's answer).
var ErrBusy = errors.New("every reboot slot of the group is taken")

// Open connects to the lock service of c.
func Open(ctx context.Context, c Config) (Slot, error) {
	c = c.WithDefaults()
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("fleet lock %q: want etcd://HOST:PORT or a FleetLock server's http(s):// URL", c.URL)
	}
	switch u.Scheme {
	case "etcd":
		return openEtcd(ctx, c, strings.Split(u.Host, ","))
	case "http", "https":
		return newHTTPSlot(c), nil
	}
	return nil, fmt.Errorf("fleet lock %q: unknown scheme %q (etcd, http, https)", c.URL, u.Scheme)
}

// Record is where a host keeps, next to its journal, the slot it holds.
func Record(journal string) string { return filepath.Join(filepath.Dir(journal), "fleetlock.json") }

// Take records c in the file record, then acquires the slot: a crash at
// any moment leaves the record, and Give gives the slot back.
func Take(ctx context.Context, c Config, record string) error {
	c = c.WithDefaults()
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(record), 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(record, b, 0o600); err != nil {
		return fmt.Errorf("recording the fleet lock: %w", err)
	}
	s, err := Open(ctx, c)
	if err != nil {
		os.Remove(record)
		return err
	}
	defer s.Close()
	if err := s.Acquire(ctx); err != nil {
		// Given back too: the acquire may have landed just as ctx ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := s.Release(rctx); rerr == nil {
			os.Remove(record)
		}
		return fmt.Errorf("taking a reboot slot of group %s from %s: %w", c.Group, c.URL, err)
	}
	return nil
}

// Held is the slot recorded in record, nil when none is.
func Held(record string) (*Config, error) {
	b, err := os.ReadFile(record)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", record, err)
	}
	return &c, nil
}

// Give gives back the slot recorded in record, if any, and removes the
// record; the record stays when the service cannot be reached, for the
// next try.
func Give(ctx context.Context, record string) error {
	c, err := Held(record)
	if err != nil || c == nil {
		return err
	}
	s, err := Open(ctx, *c)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Release(ctx); err != nil {
		return fmt.Errorf("giving back the reboot slot of group %s to %s: %w", c.Group, c.URL, err)
	}
	return os.Remove(record)
}
