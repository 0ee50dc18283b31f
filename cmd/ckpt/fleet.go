package main

import (
	"context"
	"time"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/spf13/pflag"
)

// fleetFlags say where suspend-all and update take a reboot slot.
type fleetFlags struct {
	url, group, id string
	slots          int
	ttl, poll      time.Duration
}

func (f *fleetFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "fleet-lock", "", "take a reboot slot before freezing anything, given back once every workload has resumed: etcd://HOST:PORT[,HOST:PORT] (a semaphore in etcd) or a FleetLock server's http(s):// URL")
	fs.StringVar(&f.group, "fleet-lock-group", fleetlock.DefaultGroup, "the group of hosts sharing the slots")
	fs.StringVar(&f.id, "fleet-lock-id", "", "this host's holder id (default /etc/machine-id)")
	fs.IntVar(&f.slots, "fleet-lock-slots", 1, "etcd: how many hosts of the group may update at once (set by the group's first holder)")
	fs.DurationVar(&f.ttl, "fleet-lock-ttl", fleetlock.DefaultTTL, "etcd: how long the slot of a host that never comes back stays taken (longer than a whole update)")
	fs.DurationVar(&f.poll, "fleet-lock-poll", 5*time.Second, "how often a host waiting for a slot asks again")
}

// config is the fleet lock to take, nil without --fleet-lock.
func (f *fleetFlags) config() *fleetlock.Config {
	if f.url == "" {
		return nil
	}
	return &fleetlock.Config{URL: f.url, Group: f.group, ID: f.id, Slots: f.slots,
		TTLSeconds: int64(f.ttl / time.Second), PollSeconds: f.poll.Seconds()}
}

// giveStaleSlot gives back, at a boot with nothing to resume, the reboot
// slot a suspend recorded next to journalPath and never gave back (the
// host crashed, or lost its region): this boot is its "next successful
// boot". A suspend under way (the journal lock is held) keeps it.
func giveStaleSlot(ctx context.Context, journalPath string) error {
	record := fleetlock.Record(journalPath)
	if held, err := fleetlock.Held(record); err != nil || held == nil {
		return err
	}
	unlock, err := journal.Lock()
	if err != nil {
		return nil
	}
	defer unlock()
	if j, _ := journal.Read(journalPath); j != nil && j.State != journal.StateCommitted {
		return nil // frozen workloads: ckpt recover gives it back
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return fleetlock.Give(ctx, record)
}
