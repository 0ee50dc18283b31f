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
// Update tools use it like this, for exactly what ckpt update does:
//
//	k, img, err := update.Target("")    // the bootloader's default kernel
//	pc := update.Check(update.HostFacts("/"), k)
//	if !pc.Due() { … }                  // "No action required"
//	opts := checkpoint.Options{Region: "/dev/pmem0", Backends: bs, FleetLock: lock}
//	_, err = checkpoint.RunUpdate(ctx, pc, img, opts, checkpoint.Handoff{})
//	// returns only on failure: rolled back, every workload runs
//
// or, step by step, what ckpt suspend-all does:
//
//	plan, err := checkpoint.NewPlan(ctx, opts) // nothing was touched
//	res, err := checkpoint.Suspend(ctx, plan)  // on error: rolled back
//
// SuspendAndHandoff joins the two with the kernel's load first and the
// kexec (or soft-reboot, reboot) after the commit.
package checkpoint
