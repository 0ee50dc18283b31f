package criu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/ckpt-dev/ckpt/hypervisors"
)

// What a new kernel does to a suspended workload before resume-all gets
// to it, and what PrepareBoot does about it, early in that boot:
//
//   - A connection in the host's network namespace: the new kernel answers
//     the peer's retransmits with a RST as soon as the address is up. CRIU
//     locked those connections with iptables rules at the dump, and the
//     rules died with the old kernel; PrepareBoot puts the same rules back
//     before the network starts, and the restore takes them away.
//   - A process tree gets its pids back: the new boot's own processes must
//     not take them. PrepareBoot moves the kernel's pid counter past them.
//   - A systemd service would be started afresh by systemd at boot:
//     PrepareBoot holds it back until the restore starts it (see unit.go).

var _ hypervisors.BootPreparer = (*Runtime)(nil)

// PrepareBoot implements hypervisors.BootPreparer.
func (r *Runtime) PrepareBoot(ctx context.Context, w hypervisors.Workload, raw json.RawMessage) error {
	var errs []error
	if isTree(w) {
		var rec treeRecipe
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("prepare %s: bad recipe: %w", w.ID, err)
		}
		errs = append(errs, lockConnections(ctx, rec.Locks, true), reservePids(rec.Pids))
		if rec.Unit != "" {
			errs = append(errs, holdUnit(ctx, rec.Unit))
		}
	} else {
		var rec recipe
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("prepare %s: bad recipe: %w", w.ID, err)
		}
		errs = append(errs, lockConnections(ctx, rec.Locks, true))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("prepare %s: %w", w.ID, err)
	}
	return nil
}

// hostConns are the connections of conns in the host's network namespace.
func hostConns(conns []tcpConn) []tcpConn {
	var out []tcpConn
	for _, c := range conns {
		if c.HostNet {
			out = append(out, c)
		}
	}
	return out
}

// soccrMark marks the packets of CRIU's own repair sockets, which its
// lock lets through (SOCCR_MARK).
const soccrMark = "0xC114"

// lockRules are CRIU's own rules for one connection (criu/netfilter.c),
// so CRIU's unlock at the end of the restore removes them as well.
func lockRules(c tcpConn) (tool string, rules [][]string) {
	tool = "iptables"
	if !c.Local.Addr().Is4() {
		tool = "ip6tables"
	}
	rule := func(chain string, src, dst string, sport, dport uint16) []string {
		return []string{"-t", "filter", chain, "--protocol", "tcp", "-m", "mark", "!", "--mark", soccrMark,
			"--source", src, "--sport", strconv.Itoa(int(sport)), "--destination", dst, "--dport", strconv.Itoa(int(dport)), "-j", "DROP"}
	}
	l, rm := c.Local, c.Remote
	return tool, [][]string{
		rule("INPUT", rm.Addr().String(), l.Addr().String(), rm.Port(), l.Port()),
		rule("OUTPUT", l.Addr().String(), rm.Addr().String(), l.Port(), rm.Port()),
	}
}

// lockConnections inserts (lock) or deletes the drop rules of conns. A
// rule that is there already is not added twice; deleting a rule that is
// gone (CRIU's restore took it) is not an error.
func lockConnections(ctx context.Context, conns []tcpConn, lock bool) error {
	var errs []error
	for _, c := range conns {
		tool, rules := lockRules(c)
		for _, rule := range rules {
			there := iptables(ctx, tool, "-C", rule) == nil
			switch {
			case lock && !there:
				errs = append(errs, iptables(ctx, tool, "-I", rule))
			case !lock && there:
				errs = append(errs, iptables(ctx, tool, "-D", rule))
			}
		}
	}
	return errors.Join(errs...)
}

// iptables runs tool with op (-I, -D, -C) on rule ("-t filter CHAIN ...").
func iptables(ctx context.Context, tool, op string, rule []string) error {
	args := append([]string{"-w", rule[0], rule[1], op, rule[2]}, rule[3:]...)
	if out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nsLastPid is the pid the kernel handed out last in ckpt's pid namespace.
const nsLastPid = "/proc/sys/kernel/ns_last_pid"

// reservePids keeps pids free for a tree to get back: new processes get
// pids above the largest of them (until the counter wraps at pid_max). A
// pid some process of this boot holds already is an error naming it.
func reservePids(pids []int) error {
	if len(pids) == 0 {
		return nil
	}
	top := slices.Max(pids)
	if b, err := os.ReadFile(nsLastPid); err == nil {
		if last, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && last < top {
			if err := os.WriteFile(nsLastPid, []byte(strconv.Itoa(top)), 0o644); err != nil {
				return fmt.Errorf("keeping pids up to %d free: %w", top, err)
			}
		}
	}
	return pidsFree(pids)
}

// pidsFree says which of pids this boot's processes already hold.
func pidsFree(pids []int) error {
	var taken []string
	for _, p := range pids {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); err == nil {
			taken = append(taken, fmt.Sprintf("%d (%s)", p, strings.TrimSpace(string(comm))))
		}
	}
	if len(taken) > 0 {
		return fmt.Errorf("pids %s are taken by this boot's processes; CRIU restores the tree with its own pids", strings.Join(taken, ", "))
	}
	return nil
}
