package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"bunker/internal/agent"
)

// newBindExecCmd is the agent's helper for an upload from a filesystem
// snapshot: started by the agent in a new mount namespace (the Go runtime
// makes the namespace's mounts private), it binds the snapshot read-only
// over the live mount point, in that namespace only, and executes the
// backup, which then reads the files as they were at the freeze under
// their own paths. Hidden: it is not for people.
func newBindExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:                agent.BindExecCommand + " SNAPSHOT MOUNTPOINT -- PROGRAM ARGS...",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) < 4 || args[2] != "--" {
				return usagef("usage: bunker %s SNAPSHOT MOUNTPOINT -- PROGRAM ARGS...", agent.BindExecCommand)
			}
			src, dst, argv := args[0], args[1], args[3:]
			var self, parent unix.Stat_t
			// Refuse to run in the agent's own mount namespace: the bind
			// would hide the live files from it and from every service
			// sharing it.
			if err := unix.Stat("/proc/self/ns/mnt", &self); err != nil {
				return err
			}
			if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()), &parent); err != nil {
				return err
			}
			if self.Ino == parent.Ino && self.Dev == parent.Dev {
				return fmt.Errorf("%s must run in a mount namespace of its own", agent.BindExecCommand)
			}
			if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind %s over %s: %w", src, dst, err)
			}
			if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", dst, err)
			}
			if err := os.Chdir("/"); err != nil {
				return err
			}
			prog, err := exec.LookPath(argv[0])
			if err != nil {
				return err
			}
			return syscall.Exec(prog, argv, os.Environ())
		},
	}
}

// newWatchdogCmd is the process that thaws a node's filesystems and
// unpauses its containers at the deadline should the agent die (see
// agent.WatchdogCommand). Hidden: it is not for people.
func newWatchdogCmd() *cobra.Command {
	return &cobra.Command{
		Use:    agent.WatchdogCommand,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer stop()
			return agent.RunWatchdog(ctx, c.InOrStdin())
		},
	}
}
