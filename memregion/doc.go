// Package memregion is the preserved region: the memory that holds every
// suspended workload across a kexec, and the only copy of them while the
// host boots its new kernel.
//
// # Planning
//
// A physical RAM range reserved with memmap=SIZE!OFFSET on the kernel
// command line appears as legacy persistent memory (/dev/pmemN once the
// nd_e820 and nd_pmem drivers load) and survives kexec as long as the next
// kernel gets the same parameter. Plan proposes such a range from
// /proc/iomem: inside System RAM, 128 MiB-aligned, above the first GiB,
// clear of the kernel image and anything else nested in that RAM.
//
// # Object store
//
// A Region holds objects (streamed with ObjectWriter, any size, concurrent
// writers) and one manifest. The manifest is written last and is the
// commit point: format version, kernel release, boot id, creation time,
// every object with size and xxh3-64 checksum, and an opaque restore
// record per workload. A region without a complete manifest is never
// restored from. Open reads metadata only; Verify checks every object and
// refuses a damaged region with an *ObjectError per failing object; it
// never deletes anything. Release, an explicit call, drops a checkpoint.
//
// Three layouts share that API:
//
//   - dir: a directory (tmpfs for tests, /run for a userspace-only
//     soft-reboot, a disk for a full reboot); one file per object and a
//     MANIFEST file renamed into place.
//   - raw: a layout of ours on a block device (/dev/pmemN) or a file: a
//     4 KiB superblock, then bump-allocated extents and the manifest. The
//     superblock is rewritten only to commit (point at the manifest) and to
//     release (clear the pointer). Objects are copied into a shared mmap of
//     the device, fused with hashing in 256 KiB pieces.
//   - fs: an ext4 filesystem ckpt makes on a block device and mounts
//     itself at FSMountDir/<device>, mounted with DAX where the device has
//     it (a memmap= pmem device does: the kernel gives it struct pages),
//     with a dir region at its root. CRIU and QEMU write their files there
//     in place, straight into the preserved memory, and read them back in
//     place; a VM's RAM file (cpr-reboot) can live there too.
//
// What a region can do is asked of it, not of its kind: DirectFiles
// (programs write objects as files), InPlace (those files take no RAM on
// their way), Written (progress), Survives (which restarts it outlives and
// what the next command line must keep).
//
// # The fs layout (DAX) on pmem, measured against the raw layout
//
// The raw layout takes no files: every backend that writes files (CRIU,
// podman, Docker) stages them in RAM and copies them in, and the copy
// into a block device's mapping goes through the device's page cache.
// In the Debian 12 guest of TestKernelUpdate (QEMU TCG, 1 GiB memmap=
// region, a 256 MiB runc container, a 32 MiB service, a 16 MiB VM; ckpt
// bench into each layout of the same /dev/pmem0, one run):
//
//	layout     ckpt dump    memcpy into the region   peak extra RAM
//	raw        0.023 GB/s   0.074 GB/s               268 MiB (81 %)
//	fs (DAX)   0.093 GB/s   1.120 GB/s                 9 MiB (3 %)
//
// A suspend-all into the fs layout across a real kexec took 6.5 MiB
// (2.1 %) of extra RAM. Under TCG, CRIU's own work dominates the dump, so
// the ratio to memcpy says little there; the layouts' ratio does. The
// cost of the fs layout is a mount at boot (ckpt mounts it on first
// Open, before any restore) and trusting the kernel's ext4 with the
// device's contents, which only root can write.
//
// # Why the raw layout was first chosen for pmem
//
// Measured on this project's 2-core VM (BenchmarkRegionWrite, 256 MiB per
// writer, warm region, memcpy of the same bytes between pre-touched
// buffers timed in the same iterations; medians of 2×20 runs):
//
//	layout                               1 writer       2 writers      4 writers
//	raw, mmap copy, tmpfs huge=always    12.1 GB/s 63%  14.2 GB/s 65%  13.9 GB/s 58%
//	raw, mmap copy, tmpfs 4 KiB pages     8.0 GB/s 45%  15.6 GB/s 55%  11.0 GB/s 48%
//	raw, pwrite (first version)           5.4 GB/s 33%   6.9 GB/s 28%   7.1 GB/s 22%
//	dir: files on tmpfs via write(2)      3.7 GB/s 24%   3.6 GB/s 18%   3.6 GB/s 18%
//
// The same bytes through a filesystem's write path (dir) run at a quarter
// of memcpy; the raw layout's copy into a mapping runs at half to two
// thirds, the rest being 4 KiB page handling and the hash pass (xxh3 runs
// at 21-27 GB/s here, CRC32C at 11 GB/s, which is why objects use xxh3).
// A filesystem on the pmem device would add mkfs, mount and fsck to the
// early-boot resume path, a journal that orders nothing we need, and
// metadata we would still have to checksum ourselves; the raw layout needs
// only the pmem driver, and its commit is one 4 KiB superblock write whose
// CRC exposes a torn write. Not measured here (no real pmem, no DAX in
// this VM): ext4 -o dax would let the copy go straight to pmem with 2 MiB
// mappings and skip the page cache the block device uses; a devdax
// namespace gives the raw layout the same. That is the next measurement
// on real hardware.
//
// Reproduce: go test ./memregion -run '^$' -bench RegionWrite -benchtime 20x
// (CKPT_BENCH_DIR=/mnt/x for a tmpfs mounted with huge=always).
package memregion
