#!/bin/bash
# test.sh installs what the tests need (hack/setup.sh, idempotent) and runs
# every test: formatting, vet, unit tests with -race, the integration tests
# against real CRIU/runc/QEMU and a real kexec in a QEMU guest, and one
# iteration of each benchmark so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/go/bin:$PATH

./hack/setup.sh
# The Debian 12 system image the end-to-end update tests boot (built once,
# cached under .cache/guest).
./hack/guest-image.sh debian12
# The Debian 13 one (systemd 257) for the soft-reboot update.
./hack/guest-image.sh debian13

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$bad" ]; then echo "not gofmt-clean: $bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== unit tests (-race)"
go test -race -count=1 $(go list ./... | grep -v -E '/integration|/hypervisors/')
echo "== backend tests against real runc containers, CRIU and QEMU VMs (-race)"
# libvirt's alone: while CRIU restores (criu's, podman's and Docker's tests
# run two packages at once), its cgroup yard is mounted in the host's mount
# namespace, and libvirtd then takes it for the cgroup hierarchy and fails
# to start a domain ("Unable to read from …/.criu.cgyard.*/unified/…").
go test -race -count=1 -v -timeout 30m $(go list ./hypervisors/... | grep -v /hypervisors/libvirt)
go test -race -count=1 -v -timeout 30m ./hypervisors/libvirt
echo "== integration tests (real CRIU, runc, QEMU, kexec in a QEMU guest)"
go test -count=1 -v -timeout 60m ./integration/...
echo "== benchmarks (one iteration each, smoke)"
go test -run '^$' -bench . -benchtime 1x $(go list ./... | grep -v /integration)
