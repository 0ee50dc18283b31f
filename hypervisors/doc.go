// Package hypervisors is the contract between the ckpt engine and the
// backends that suspend workloads: containers through CRIU
// (hypervisors/criu) and VMs through QMP (hypervisors/qemu).
//
// A backend registers itself in init (Register) and may decline to run on
// a host by returning an error wrapping ErrSkipBackend from its Init; the
// engine goes on with the others. The engine never switches on a
// backend's name: it calls the Backend methods and detects the optional
// abilities (Preflighter, PreDumper, SizeEstimator) by type assertion.
//
// # Lifecycle of one workload
//
//	Discover → Freeze → Dump (workload stays frozen, alive)
//	  ├─ commit (manifest sealed) → Finish (the original ends)
//	  └─ rollback (anything failed) → Thaw (the original runs on)
//	after kexec: Restore (from the objects and the recipe Dump returned)
//
// Every backend passes the shared suite in hypervisors/conformance.
package hypervisors
