// Package checkpoint suspends every workload of a host into a region:
// plan (discover, size, preflight), freeze all, dump in parallel, seal the
// manifest (the commit point), end the originals, and hand off to kexec.
// Any failure before the commit point rolls back: every workload is thawed
// on the old kernel and the error names the workload and the phase.
//
// A journal on disk (not in /run, which kexec and soft-reboot wipe) lists
// the workloads a run froze, so that after a crash or kill -9 of ckpt,
// Recover thaws them; the engine calls it at the start of every run.
//
// Update tools use it like this:
//
//	plan, err := checkpoint.NewPlan(ctx, checkpoint.Options{Region: "/dev/pmem0", Backends: bs})
//	if err != nil { … }                 // nothing was touched
//	res, err := checkpoint.Suspend(ctx, plan)
//	if err != nil { … }                 // rolled back: every workload runs
//	err = checkpoint.Handoff(kexecImage) // reboot into the new kernel
package checkpoint
