package kexec

import "strings"

// EditCmdline returns cmdline with each "key=value" (or bare "key") of set
// replacing every parameter with that key, in place of the first one or at
// the end, and every key in drop removed. Quoting is kept as the kernel
// prints it: parameters are split on spaces outside double quotes. Only
// the kernel's part is edited: what follows "--" is init's arguments and
// is kept as it is, after the new parameters.
func EditCmdline(cmdline string, set, drop []string) string {
	params, initArgs := kernelPart(splitCmdline(cmdline))
	dropKey := map[string]bool{}
	for _, k := range drop {
		dropKey[k] = true
	}
	for _, kv := range set {
		dropKey[paramKey(kv)] = true
	}
	var out []string
	placed := map[string]bool{}
	for _, p := range params {
		k := paramKey(p)
		if !dropKey[k] {
			out = append(out, p)
			continue
		}
		for _, kv := range set {
			if paramKey(kv) == k && !placed[kv] {
				out = append(out, kv)
				placed[kv] = true
			}
		}
	}
	for _, kv := range set {
		if !placed[kv] {
			out = append(out, kv)
		}
	}
	return strings.Join(append(out, initArgs...), " ")
}

// kernelPart splits parameters at the first "--": the kernel's, and init's
// (with the "--").
func kernelPart(params []string) (kernel, init []string) {
	for i, p := range params {
		if p == "--" {
			return params[:i], params[i:]
		}
	}
	return params, nil
}

// Param returns the value of key on cmdline and whether it is present.
func Param(cmdline, key string) (string, bool) {
	params, _ := kernelPart(splitCmdline(cmdline))
	for _, p := range params {
		if paramKey(p) == key {
			_, v, _ := strings.Cut(p, "=")
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

func paramKey(p string) string {
	k, _, _ := strings.Cut(p, "=")
	return k
}

func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
