package criu

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0F02000A:1B59":                         "10.0.2.15:7001",
		"00000000000000000000000001000000:0016": "[::1]:22",
		"0000000000000000FFFF00000F02000A:1B59": "10.0.2.15:7001", // v4-mapped
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:", "01007F:1F90", "zz00007F:1F90", "0100007F:10000"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) accepted", bad)
		}
	}
}

func TestReadEstablishedOnlyOwnSockets(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0F02000A:1B59 0202000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
   1: 0F02000A:1B59 0202000A:D432 01 00000000:00000000 00:00000000 00000000     0        0 9999 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1B59 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 100 0 0 10 0
`
	p := filepath.Join(t.TempDir(), "tcp")
	if err := os.WriteFile(p, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readEstablished(p, map[string]bool{"4242": true, "4243": true})
	if err != nil {
		t.Fatal(err)
	}
	want := tcpConn{Local: netip.MustParseAddrPort("10.0.2.15:7001"), Remote: netip.MustParseAddrPort("10.0.2.2:54321")}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("readEstablished = %+v, want [%+v] (listening and foreign sockets left out)", got, want)
	}
}

// The lock must be CRIU's own rules (criu/netfilter.c), so that CRIU's
// unlock at the end of its restore takes them away.
func TestLockRulesAreCRIUs(t *testing.T) {
	c := tcpConn{Local: netip.MustParseAddrPort("10.0.2.15:7001"), Remote: netip.MustParseAddrPort("10.0.2.2:54321")}
	tool, rules := lockRules(c)
	if tool != "iptables" || len(rules) != 2 {
		t.Fatalf("lockRules = %s %v", tool, rules)
	}
	in := strings.Join(rules[0], " ")
	out := strings.Join(rules[1], " ")
	if in != "-t filter INPUT --protocol tcp -m mark ! --mark 0xC114 --source 10.0.2.2 --sport 54321 --destination 10.0.2.15 --dport 7001 -j DROP" {
		t.Errorf("input rule: %s", in)
	}
	if out != "-t filter OUTPUT --protocol tcp -m mark ! --mark 0xC114 --source 10.0.2.15 --sport 7001 --destination 10.0.2.2 --dport 54321 -j DROP" {
		t.Errorf("output rule: %s", out)
	}
	if tool, _ := lockRules(tcpConn{Local: netip.MustParseAddrPort("[fd00::1]:80"), Remote: netip.MustParseAddrPort("[fd00::2]:999")}); tool != "ip6tables" {
		t.Errorf("IPv6 connection locked with %s", tool)
	}
}

func TestSystemdQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/usr/sbin/criu":  "/usr/sbin/criu",
		"fd[1]:pipe:[42]": "fd[1]:pipe:[42]",
		"/run/a b":        `"/run/a b"`,
		`50%$HOME"`:       `"50%%$$HOME\""`,
		"":                `""`,
	} {
		if got := systemdQuote(in); got != want {
			t.Errorf("systemdQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
