package hypervisors

import "sync"

// A CRIU restore mounts a temporary cgroup yard in the mount namespace it
// runs in, the host's for runc's and podman's restores; libvirtd, starting
// a domain meanwhile, reads the mount table for the cgroup hierarchy, can
// take the yard for it, and fails ("Unable to read from
// …/.criu.cgyard.*/unified/…/cgroup.controllers"). resume-all restores
// in parallel, so within this process the two are kept apart: CRIU
// restores share the yard lock, a libvirt domain's start holds it alone.
var cgroupYard sync.RWMutex

// CRIURestoring is held around a CRIU restore; call the result when it
// has ended.
func CRIURestoring() (done func()) {
	cgroupYard.RLock()
	return cgroupYard.RUnlock
}

// DomainStarting is held around the start of a libvirt domain; call the
// result when it has ended.
func DomainStarting() (done func()) {
	cgroupYard.Lock()
	return cgroupYard.Unlock
}
