package kexec

import "testing"

func TestEditCmdline(t *testing.T) {
	for _, tc := range []struct {
		in        string
		set, drop []string
		want      string
	}{
		{"console=ttyS0 memmap=256M!1G ckpt.stage=write quiet\n", []string{"ckpt.stage=verify"}, nil,
			"console=ttyS0 memmap=256M!1G ckpt.stage=verify quiet"},
		{"a=1 b=2 a=3", []string{"a=9"}, nil, "a=9 b=2"},
		{"root=/dev/vda BOOT_IMAGE=/vmlinuz x", []string{"memmap=256M!1G"}, []string{"BOOT_IMAGE"}, "root=/dev/vda x memmap=256M!1G"},
		{`dyndbg="file a.c +p" ro`, nil, []string{"ro"}, `dyndbg="file a.c +p"`},
		// After "--" come init's arguments: kept, and not edited.
		{"quiet rdinit=/init -- -guest ro", []string{"ckpt.stage=verify"}, []string{"ro"}, "quiet rdinit=/init ckpt.stage=verify -- -guest ro"},
	} {
		if got := EditCmdline(tc.in, tc.set, tc.drop); got != tc.want {
			t.Errorf("EditCmdline(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
	if v, ok := Param(`x memmap=256M!1G y`, "memmap"); !ok || v != "256M!1G" {
		t.Errorf("Param = %q, %v", v, ok)
	}
	if _, ok := Param(`x -- memmap=256M!1G`, "memmap"); ok {
		t.Error("Param found an init argument")
	}
}
