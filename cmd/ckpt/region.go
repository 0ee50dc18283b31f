package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
)

func newRegionCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "region",
		Short: "Plan, format, inspect, verify and release the preserved region",
	}
	c.AddCommand(
		newRegionPlanCommand(g),
		newRegionFormatCommand(g),
		newRegionInspectCommand(g),
		newRegionVerifyCommand(g),
		newRegionReleaseCommand(g),
		newRegionSelftestCommand(g),
	)
	return c
}

// printable escapes what a terminal would interpret in a string that comes
// from region bytes (names, kernel, boot id, ids, error text): control
// characters, invalid UTF-8, other non-printable runes (bidi overrides)
// and the backslash itself become Go escapes. --json output is not passed
// through it: JSON escapes control characters and keeps the value exact.
func printable(s string) string {
	return escape(s, false)
}

// escape is printable; errText leaves '\n' (errors.Join's separator) and
// backslashes (of names the error already quoted) alone.
func escape(s string, errText bool) string {
	clean := true
	for _, r := range s {
		if r == '\\' && !errText || r == utf8.RuneError || !strconv.IsPrint(r) && !(errText && r == '\n') {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\' && !errText:
			b.WriteString(`\\`)
		case errText && r == '\n', strconv.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// printableError escapes an error's text for the terminal and keeps it
// testable with errors.Is and errors.As.
type printableError struct{ err error }

func (e printableError) Error() string { return escape(e.err.Error(), true) }
func (e printableError) Unwrap() error { return e.err }

// regionError wraps err (nil stays nil) so that its text is printable.
func regionError(err error) error {
	if err == nil {
		return nil
	}
	return printableError{err}
}
