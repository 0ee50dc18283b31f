package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/spf13/cobra"
)

// globals are the flags every verb takes.
type globals struct {
	json     bool
	logLevel string
	timeout  time.Duration

	once sync.Once
	errw io.Writer   // stderr, or term
	term *termWriter // stderr when it is a terminal (progress bars)
}

// version is set at build time (hack/build-deb.sh: -ldflags -X main.version=...).
var version = "devel"

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ckpt",
		Version:       version,
		Short:         "Rebootless host updates: suspend every workload into memory, kexec, resume",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.BoolVar(&g.json, "json", false, "print results as JSON")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.DurationVar(&g.timeout, "timeout", 0, "give up after this long (0: no limit)")
	root.AddCommand(
		newRegionCommand(g),
		newKexecCommand(g),
		newDemoCommand(g),
		newPlanCommand(g),
		newSuspendAllCommand(g),
		newResumeAllCommand(g),
		newResumeCommand(g),
		newRecoverCommand(g),
		newUpdateCommand(g),
		newStatusCommand(g),
		newBenchCommand(g),
	)
	return root
}

// logger writes human logs to stderr at the chosen level.
func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if g.json {
		return slog.New(slog.NewJSONHandler(g.stderr(), opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr(), opts))
}

// context applies --timeout to the command's context.
func (g *globals) context(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if g.timeout > 0 {
		return context.WithTimeout(cmd.Context(), g.timeout)
	}
	return context.WithCancel(cmd.Context())
}

// print writes v as JSON with --json, else calls text.
func (g *globals) print(w io.Writer, v any, text func(io.Writer)) error {
	if g.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(w)
	return nil
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}
