package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
)

// DefaultConfigDir holds ckpt.toml and drop-ins in ckpt.toml.d/*.toml,
// read in name order; later files override earlier ones key by key, and
// flags given on the command line override them all.
const DefaultConfigDir = "/etc/ckpt"

// loadConfig merges the config files of dir into one table.
func loadConfig(dir string) (map[string]any, error) {
	files := []string{filepath.Join(dir, "ckpt.toml")}
	drop, _ := filepath.Glob(filepath.Join(dir, "ckpt.toml.d", "*.toml"))
	sort.Strings(drop)
	files = append(files, drop...)
	merged := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var t map[string]any
		if _, err := toml.Decode(string(b), &t); err != nil {
			return nil, fmt.Errorf("config %s: %w", f, err)
		}
		merge(merged, t)
	}
	return merged, nil
}

// merge copies src into dst, recursing into tables.
func merge(dst, src map[string]any) {
	for k, v := range src {
		if sv, ok := v.(map[string]any); ok {
			dv, ok := dst[k].(map[string]any)
			if !ok {
				dv = map[string]any{}
				dst[k] = dv
			}
			merge(dv, sv)
			continue
		}
		dst[k] = v
	}
}

// configKeys maps the top-level config keys to flags; the backends'
// tables ([backends.NAME]) go to the backends (see backendFlags).
var configKeys = map[string]string{
	"region":       "region",
	"journal":      "journal",
	"resume_state": "resume-state",
	"concurrency":  "concurrency",
	"metrics_dir":  "metrics-dir",
	// [restore]
	"restore.huge_pages": "huge-pages",
	"restore.lazy":       "lazy",
	// [fleet_lock]: the reboot slot of suspend-all and update.
	"fleet_lock.url":   "fleet-lock",
	"fleet_lock.group": "fleet-lock-group",
	"fleet_lock.id":    "fleet-lock-id",
	"fleet_lock.slots": "fleet-lock-slots",
	"fleet_lock.ttl":   "fleet-lock-ttl",
	"fleet_lock.poll":  "fleet-lock-poll",
}

// applyConfig sets every flag the command line did not set from the
// config table; unknown keys are an error, so typos do not pass silently.
func applyConfig(fs *pflag.FlagSet, cfg map[string]any) error {
	flat := map[string]any{}
	for k, v := range cfg {
		if t, ok := v.(map[string]any); ok {
			for k2, v2 := range t {
				flat[k+"."+k2] = v2
			}
			continue
		}
		flat[k] = v
	}
	keys := make([]string, 0, len(flat))
	for k := range flat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name, ok := configKeys[k]
		if !ok {
			return fmt.Errorf("config: unknown key %q", k)
		}
		f := fs.Lookup(name)
		if f == nil || f.Changed {
			continue
		}
		switch v := flat[k].(type) {
		case []any:
			for _, x := range v {
				if err := fs.Set(name, fmt.Sprint(x)); err != nil {
					return fmt.Errorf("config %s: %w", k, err)
				}
			}
		default:
			if err := fs.Set(name, fmt.Sprint(v)); err != nil {
				return fmt.Errorf("config %s: %w", k, err)
			}
		}
		f.Changed = false // still "not given on the command line"
	}
	return nil
}
