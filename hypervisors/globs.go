package hypervisors

import (
	"fmt"
	"path"
)

// CheckGlobs fails on a malformed path.Match pattern among pats, the
// config key's values named what.
func CheckGlobs(what string, pats []string) error {
	for _, pat := range pats {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("%s %q: %w", what, pat, err)
		}
	}
	return nil
}

// MatchGlobs says whether name matches one of the path.Match patterns
// pats (checked by CheckGlobs).
func MatchGlobs(pats []string, name string) bool {
	for _, pat := range pats {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	return false
}
