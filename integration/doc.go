// Package integration holds end-to-end tests that run ckpt against real
// components: CRIU, runc, QEMU, and a real kexec inside a QEMU guest.
//
// They need root and the tools hack/setup.sh installs. Outside CI a test
// whose tool is missing skips and says which; with CI=true it fails, so a
// missing install step cannot hide behind a skip.
package integration
