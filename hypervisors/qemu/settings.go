package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// attrSettings is the workload attribute that holds the migration
// settings a dump may change, as the plan found them (JSON settings).
const attrSettings = "migration-settings"

// The settings a dump changes: the bandwidth limit, mapped-ram with
// multifd, and cpr-reboot's mode with x-ignore-shared.
var (
	dumpParameters   = []string{"max-bandwidth", "multifd-channels", "mode"}
	dumpCapabilities = []string{"mapped-ram", "multifd", "x-ignore-shared"}
)

// settings are a VM's migration settings that a dump may change.
type settings struct {
	Parameters   map[string]json.RawMessage `json:"parameters"`
	Capabilities map[string]bool            `json:"capabilities"`
}

// migrationSettings reads the settings a dump may change, as JSON for a
// workload attribute (so the journal keeps them across a crash).
func migrationSettings(ctx context.Context, v *vm) (string, error) {
	var params map[string]json.RawMessage
	if err := v.mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil {
		return "", err
	}
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := v.mon.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return "", err
	}
	s := settings{Parameters: map[string]json.RawMessage{}, Capabilities: map[string]bool{}}
	for k, val := range params {
		if slices.Contains(dumpParameters, k) {
			s.Parameters[k] = val
		}
	}
	for _, c := range caps {
		if slices.Contains(dumpCapabilities, c.Capability) {
			s.Capabilities[c.Capability] = c.State
		}
	}
	b, err := json.Marshal(s)
	return string(b), err
}

// untilSettled retries fn while QEMU refuses it, for a few seconds: QEMU
// (9.1 and later) reports a migration "completed" or "cancelled" before
// its cleanup has run, and refuses settings until then ("There's a
// migration process in progress").
func untilSettled(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		var qe *QMPError
		if err == nil || !errors.As(err, &qe) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// restoreSettings puts back the settings migrationSettings recorded.
func restoreSettings(ctx context.Context, v *vm, recorded string) error {
	var s settings
	if err := json.Unmarshal([]byte(recorded), &s); err != nil {
		return err
	}
	var errs []error
	if len(s.Capabilities) > 0 {
		var cs []map[string]any
		for _, n := range dumpCapabilities { // QEMU checks them in order: multifd before mapped-ram is off
			if on, ok := s.Capabilities[n]; ok {
				cs = append(cs, map[string]any{"capability": n, "state": on})
			}
		}
		errs = append(errs, v.mon.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": cs}, nil))
	}
	if len(s.Parameters) > 0 {
		errs = append(errs, v.mon.Execute(ctx, "migrate-set-parameters", s.Parameters, nil))
	}
	return errors.Join(errs...)
}
