package main

import (
	"fmt"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

func newRegionFormatCommand(g *globals) *cobra.Command {
	var opts memregion.FormatOptions
	var size string
	c := &cobra.Command{
		Use:   "format PATH",
		Short: "Prepare a directory, file or /dev/pmemN to hold a region",
		Long: `Prepare PATH to hold a region. A directory (tmpfs, /run, a disk) gets the
directory layout; a block device such as /dev/pmem0 or a file gets the raw layout.
--kind fs makes an ext4 filesystem on a block device that ckpt mounts itself
(at /run/ckpt/fs/<device>), with DAX on pmem: CRIU and QEMU then write their
files straight into the preserved memory, where the raw layout stages CRIU's
images in RAM and copies them in. Without --kind, a device keeps its layout.
Without --force, refuses anything that might hold a checkpoint (a committed
checkpoint, or a ckpt marker, superblock or manifest that is damaged, of
another version or unreadable) and says what it found. Refuses paths owned by
another user and tightens looser modes (0700 directories, 0600 files); a
failed format leaves an existing path as it was.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size != "" {
				n, err := memregion.ParseSize(size)
				if err != nil {
					return usageError{err}
				}
				opts.Size = n
			}
			if err := memregion.Format(args[0], opts); err != nil {
				return regionError(err)
			}
			if !g.json {
				fmt.Fprintf(cmd.OutOrStdout(), "formatted %s\n", printable(args[0]))
			}
			return nil
		},
	}
	c.Flags().StringVar(&opts.Kind, "kind", "", "dir, raw or fs (default: the device's layout, else raw for devices and files, dir for directories)")
	c.Flags().StringVar(&size, "size", "", "size of a new raw region file")
	c.Flags().BoolVar(&opts.Force, "force", false, "overwrite a committed checkpoint")
	return c
}
