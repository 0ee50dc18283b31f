// Package update is the whole rebootless update as a library: which
// kernel the bootloader would boot (DefaultKernel, read the way vzreboot
// reads GRUB), which update path applies and why (Check, the precheck
// that `ckpt update --check` prints). checkpoint.RunUpdate takes the path
// and hands off; the CLI's `ckpt update` only builds their options.
package update

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Kernel is a kernel the bootloader can boot.
type Kernel struct {
	Version string `json:"version"` // e.g. 6.12.95+deb12-amd64
	Kernel  string `json:"kernel"`  // path on this host
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"` // the entry's, for information (kexec keeps the running one's)
	Title   string `json:"title,omitempty"`
	// Source says how it was chosen ("GRUB_DEFAULT=saved, saved_entry …").
	Source string `json:"source"`
}

// ErrNoBootloader: no GRUB or systemd-boot configuration was found.
var ErrNoBootloader = errors.New("no bootloader configuration found")

// DefaultKernel is the kernel the host's bootloader boots by default, with
// paths under root ("/" on the host): GRUB's grub.cfg with its grubenv
// (next_entry, then saved_entry when the default is saved) and
// /etc/default/grub, or systemd-boot's loader.conf and entries.
func DefaultKernel(root string) (Kernel, error) {
	if k, err := grubDefault(root); !errors.Is(err, ErrNoBootloader) {
		return k, err
	}
	return systemdBootDefault(root)
}

// menuEntry is one GRUB menu entry; Path is its place in the menu as GRUB
// names it ("1>2"), IDs its title and $menuentry_id_option id.
type menuEntry struct {
	Path, Title, ID string
	Linux, Initrd   string
	Cmdline         string
}

// parseGrubCfg lists grub.cfg's menu entries, in submenus too.
func parseGrubCfg(r io.Reader) ([]menuEntry, error) {
	var out []menuEntry
	type block struct {
		kind  string // "submenu", "entry", "other" (a function, …)
		count int    // entries counted in a submenu (or the top level)
		path  string // a submenu's own path
	}
	stack := []*block{{kind: "submenu"}} // the top level
	menu := func() *block {
		for i := len(stack) - 1; i >= 0; i-- {
			if stack[i].kind == "submenu" {
				return stack[i]
			}
		}
		return stack[0]
	}
	var cur *menuEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		isEntry, isMenu := strings.HasPrefix(line, "menuentry "), strings.HasPrefix(line, "submenu ")
		switch {
		case isEntry || isMenu:
			title, id := entryNames(line)
			m := menu()
			p := strconv.Itoa(m.count)
			if m.path != "" {
				p = m.path + ">" + p
			}
			m.count++
			if isMenu {
				stack = append(stack, &block{kind: "submenu", path: p})
				out = append(out, menuEntry{Path: p, Title: title, ID: id}) // a submenu, no kernel
			} else {
				stack = append(stack, &block{kind: "entry"})
				cur = &menuEntry{Path: p, Title: title, ID: id}
			}
		case strings.HasSuffix(line, "{"):
			stack = append(stack, &block{kind: "other"})
		case line == "}":
			if len(stack) < 2 {
				return nil, fmt.Errorf("grub.cfg: unbalanced braces")
			}
			if top := stack[len(stack)-1]; top.kind == "entry" && cur != nil {
				out = append(out, *cur)
				cur = nil
			}
			stack = stack[:len(stack)-1]
		case cur != nil && (strings.HasPrefix(line, "linux ") || strings.HasPrefix(line, "linux\t") ||
			strings.HasPrefix(line, "linuxefi") || strings.HasPrefix(line, "linux16")):
			if f := strings.Fields(line); len(f) > 1 {
				cur.Linux, cur.Cmdline = f[1], strings.Join(f[2:], " ")
			}
		case cur != nil && strings.HasPrefix(line, "initrd"):
			if f := strings.Fields(line); len(f) > 1 {
				cur.Initrd = f[len(f)-1] // the last is the kernel's own (microcode comes first)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(stack) != 1 {
		return nil, fmt.Errorf("grub.cfg: unbalanced braces")
	}
	return out, nil
}

// entryNames reads a menuentry line's title and id.
func entryNames(line string) (title, id string) {
	words := shellWords(line)
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "$menuentry_id_option" || w == "--id":
			if i+1 < len(words) {
				id = words[i+1]
				i++
			}
		case title == "" && !strings.HasPrefix(w, "-") && w != "{":
			title = w
		case strings.HasPrefix(w, "--") && i+1 < len(words) && !strings.HasPrefix(words[i+1], "-") && w != "--unrestricted":
			i++ // --class debian, --users x
		}
	}
	return title, id
}

// shellWords splits a GRUB command line, honouring quotes.
func shellWords(s string) []string {
	var out []string
	var b strings.Builder
	var quote rune
	in := false
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				b.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, b.String())
	}
	return out
}

// parseEnv reads KEY=value lines (grubenv, /etc/default/grub), without
// quotes and comments.
func parseEnv(r io.Reader) map[string]string {
	env := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		env[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	return env
}

// chooseGrub picks the entry GRUB boots: next_entry (a one-time choice),
// then GRUB_DEFAULT, which may be "saved" (saved_entry), an index, a menu
// path ("1>2"), a title or an id, or a path of titles and ids.
func chooseGrub(entries []menuEntry, grubDefault string, env map[string]string) (menuEntry, string, error) {
	want, src := grubDefault, "GRUB_DEFAULT="+grubDefault
	if grubDefault == "" {
		want, src = "0", "GRUB_DEFAULT unset (the first entry)"
	}
	if grubDefault == "saved" {
		want, src = env["saved_entry"], "GRUB_DEFAULT=saved, saved_entry="+env["saved_entry"]
		if want == "" {
			want, src = "0", "GRUB_DEFAULT=saved, no saved_entry (the first entry)"
		}
	}
	if n := env["next_entry"]; n != "" {
		want, src = n, "grubenv next_entry="+n+" (this boot only)"
	}
	for _, e := range entries {
		if e.Linux != "" && matchesEntry(entries, e, want) {
			return e, src, nil
		}
	}
	return menuEntry{}, src, fmt.Errorf("GRUB's default %q (%s) names no kernel entry in grub.cfg", want, src)
}

// matchesEntry: want names e by menu path, or by a ">"-path of titles or
// ids of e and its submenus.
func matchesEntry(entries []menuEntry, e menuEntry, want string) bool {
	if e.Path == want {
		return true
	}
	parts := strings.Split(want, ">")
	own := strings.Split(e.Path, ">")
	if len(parts) != len(own) {
		return false
	}
	for i := range parts {
		p := strings.Join(own[:i+1], ">")
		var at *menuEntry
		for j := range entries {
			if entries[j].Path == p {
				at = &entries[j]
			}
		}
		if at == nil || (parts[i] != own[i] && parts[i] != at.Title && parts[i] != at.ID) {
			return false
		}
	}
	return true
}

// grubDefault is DefaultKernel for GRUB.
func grubDefault(root string) (Kernel, error) {
	var cfgPath string
	for _, p := range []string{"boot/grub/grub.cfg", "boot/grub2/grub.cfg"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			cfgPath = filepath.Join(root, p)
			break
		}
	}
	if cfgPath == "" {
		return Kernel{}, ErrNoBootloader
	}
	f, err := os.Open(cfgPath)
	if err != nil {
		return Kernel{}, err
	}
	defer f.Close()
	entries, err := parseGrubCfg(f)
	if err != nil {
		return Kernel{}, err
	}
	env := readEnvFile(filepath.Join(filepath.Dir(cfgPath), "grubenv"))
	def := readEnvFile(filepath.Join(root, "etc/default/grub"))["GRUB_DEFAULT"]
	e, src, err := chooseGrub(entries, def, env)
	if err != nil {
		return Kernel{}, err
	}
	k := Kernel{Title: e.Title, Cmdline: e.Cmdline, Source: "GRUB: " + src}
	k.Kernel = bootFile(root, e.Linux)
	if e.Initrd != "" {
		k.Initrd = bootFile(root, e.Initrd)
	}
	k.Version = strings.TrimPrefix(filepath.Base(e.Linux), "vmlinuz-")
	return k, nil
}

func readEnvFile(p string) map[string]string {
	f, err := os.Open(p)
	if err != nil {
		return map[string]string{}
	}
	defer f.Close()
	return parseEnv(f)
}

// bootFile maps a path GRUB reads from its root device to this host:
// "/boot/vmlinuz-…" where /boot is on the root filesystem, "/vmlinuz-…"
// where /boot is a filesystem of its own.
func bootFile(root, p string) string {
	if _, err := os.Stat(filepath.Join(root, p)); err == nil || strings.HasPrefix(p, "/boot/") {
		return filepath.Join("/", p)
	}
	return filepath.Join("/boot", p)
}

// loaderEntry is a systemd-boot Boot Loader Specification entry.
type loaderEntry struct {
	ID, Title, Version, Linux, Initrd, Options string
}

// systemdBootDefault is DefaultKernel for systemd-boot: loader.conf's
// default (a glob over entry ids), else the entry with the highest
// version.
func systemdBootDefault(root string) (Kernel, error) {
	for _, esp := range []string{"boot/efi", "efi", "boot"} {
		conf := filepath.Join(root, esp, "loader/loader.conf")
		if _, err := os.Stat(conf); err != nil {
			continue
		}
		entries, err := readLoaderEntries(filepath.Join(root, esp, "loader/entries"))
		if err != nil {
			return Kernel{}, err
		}
		e, src, err := chooseLoader(entries, readLoaderConf(conf)["default"])
		if err != nil {
			return Kernel{}, err
		}
		k := Kernel{Version: e.Version, Title: e.Title, Cmdline: e.Options, Source: "systemd-boot: " + src,
			Kernel: filepath.Join(root, esp, e.Linux)}
		if e.Initrd != "" {
			k.Initrd = filepath.Join(root, esp, e.Initrd)
		}
		if k.Version == "" {
			k.Version = strings.TrimPrefix(filepath.Base(e.Linux), "vmlinuz-")
		}
		return k, nil
	}
	return Kernel{}, ErrNoBootloader
}

func readLoaderConf(p string) map[string]string {
	m := map[string]string{}
	b, err := os.ReadFile(p)
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			m[f[0]] = strings.Join(f[1:], " ")
		}
	}
	return m
}

func readLoaderEntries(dir string) ([]loaderEntry, error) {
	ms, _ := filepath.Glob(filepath.Join(dir, "*.conf"))
	var out []loaderEntry
	for _, p := range ms {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		e := parseLoaderEntry(f)
		f.Close()
		e.ID = strings.TrimSuffix(filepath.Base(p), ".conf")
		out = append(out, e)
	}
	return out, nil
}

// parseLoaderEntry reads one entry file ("key value" lines).
func parseLoaderEntry(r io.Reader) loaderEntry {
	var e loaderEntry
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		v := strings.Join(f[1:], " ")
		switch f[0] {
		case "title":
			e.Title = v
		case "version":
			e.Version = v
		case "linux":
			e.Linux = v
		case "initrd":
			e.Initrd = v // the last one is the kernel's own
		case "options":
			e.Options = strings.TrimSpace(e.Options + " " + v)
		}
	}
	return e
}

// chooseLoader picks loader.conf's default (a glob matched against entry
// ids, with or without ".conf"), or else the newest version.
func chooseLoader(entries []loaderEntry, def string) (loaderEntry, string, error) {
	if len(entries) == 0 {
		return loaderEntry{}, "", errors.New("systemd-boot: no entries in loader/entries")
	}
	sort.Slice(entries, func(i, j int) bool {
		return VersionLess(entries[j].Version+entries[j].ID, entries[i].Version+entries[i].ID)
	})
	if def != "" {
		for _, e := range entries {
			if ok, _ := path.Match(def, e.ID); ok {
				return e, "loader.conf default " + def, nil
			}
			if ok, _ := path.Match(def, e.ID+".conf"); ok {
				return e, "loader.conf default " + def, nil
			}
		}
		return loaderEntry{}, "", fmt.Errorf("systemd-boot: loader.conf's default %q matches no entry", def)
	}
	return entries[0], "no default in loader.conf (the newest entry)", nil
}

// VersionLess compares kernel versions numerically where they differ by
// numbers ("6.1.0-9" < "6.1.0-10" < "6.12.95").
func VersionLess(a, b string) bool {
	fa, fb := strings.FieldsFunc(a, notDigit), strings.FieldsFunc(b, notDigit)
	for i := 0; i < len(fa) && i < len(fb); i++ {
		x, _ := strconv.Atoi(fa[i])
		y, _ := strconv.Atoi(fb[i])
		if x != y {
			return x < y
		}
	}
	return len(fa) < len(fb)
}

func notDigit(r rune) bool { return r < '0' || r > '9' }
