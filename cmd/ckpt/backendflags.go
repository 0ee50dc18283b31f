package main

import (
	"fmt"
	"sort"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/spf13/pflag"
)

// backendFlags are the command-line flags the registered backends declare
// (hypervisors.Registration.Flags) and their config tables from ckpt.toml
// ([backends.NAME]); cmd/ckpt knows no backend by name.
type backendFlags struct {
	fs     *pflag.FlagSet
	flags  []backendFlag
	tables map[string]map[string]any // from the config files
}

type backendFlag struct {
	backend string
	hypervisors.Flag
}

// add declares every registered backend's flags in fs.
func (b *backendFlags) add(fs *pflag.FlagSet) {
	b.fs = fs
	for _, r := range hypervisors.Registered() {
		for _, fl := range r.Flags {
			if fl.List {
				fs.StringSlice(fl.Name, nil, fl.Usage)
			} else {
				fs.String(fl.Name, "", fl.Usage)
			}
			b.flags = append(b.flags, backendFlag{r.Name, fl})
		}
	}
}

// setTables takes the backends' tables from the merged config: a
// [backends] table of [backends.NAME] tables, and, as before it, a
// top-level [NAME] table for a registered backend. It returns the config
// without them.
func (b *backendFlags) setTables(cfg map[string]any) (map[string]any, error) {
	b.tables = map[string]map[string]any{}
	rest := map[string]any{}
	registered := map[string]bool{}
	for _, r := range hypervisors.Registered() {
		registered[r.Name] = true
	}
	take := func(name string, v any) error {
		t, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("config: [backends.%s] must be a table", name)
		}
		if b.tables[name] == nil {
			b.tables[name] = map[string]any{}
		}
		merge(b.tables[name], t)
		return nil
	}
	for k, v := range cfg {
		switch {
		case k == "backends":
			bt, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("config: [backends] must be a table")
			}
			for name, t := range bt {
				if err := take(name, t); err != nil {
					return nil, err
				}
			}
		case registered[k]:
			if err := take(k, v); err != nil { // the spelling before [backends.NAME]
				return nil, err
			}
		default:
			rest[k] = v
		}
	}
	return rest, nil
}

// configs are the backends' config tables: the config files', with the
// flags given on the command line over them, then extra over all.
func (b *backendFlags) configs(extra map[string]map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	set := func(backend, key string, v any) {
		if out[backend] == nil {
			out[backend] = map[string]any{}
		}
		out[backend][key] = v
	}
	for name, t := range b.tables {
		for k, v := range t {
			set(name, k, v)
		}
	}
	for _, fl := range b.flags {
		f := b.fs.Lookup(fl.Name)
		if f == nil || !f.Changed {
			continue
		}
		if fl.List {
			vs, _ := b.fs.GetStringSlice(fl.Name)
			set(fl.backend, fl.Key, anyList(vs))
		} else {
			set(fl.backend, fl.Key, f.Value.String())
		}
	}
	names := make([]string, 0, len(extra))
	for n := range extra {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for k, v := range extra[n] {
			set(n, k, v)
		}
	}
	return out
}

func anyList(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
