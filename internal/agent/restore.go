package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"bunker/internal/api"
)

// restore restores the given snapshots of the command's plans, each with
// the plan's restore hooks around it (stop, then start the service). What
// is restored where comes from this agent's configuration; the director
// names only plans, snapshots and, for paths, paths within the plan's.
func (a *Agent) restore(ctx context.Context, c api.Command) error {
	var errs []error
	for _, name := range c.Plans {
		p := a.cfg.Plans[name]
		id := c.Snapshots[name]
		if id == "" {
			return fmt.Errorf("plan %s: no snapshot named", name)
		}
		if err := checkIncludes(p, c.Includes); err != nil {
			return fmt.Errorf("plan %s: %w", name, err)
		}
		for i, h := range p.RestorePre {
			if err := a.runHook(ctx, h, timeZero); err != nil {
				return errors.Join(append(errs, fmt.Errorf("plan %s: restore_pre hook %d: %w", name, i+1, err))...)
			}
		}
		err := a.restorePlan(ctx, name, p, id, c.Includes)
		if err != nil {
			errs = append(errs, fmt.Errorf("plan %s: %w", name, err))
		}
		// The services start again whatever happened.
		for i, h := range p.RestorePost {
			if herr := a.runHook(ctx, h, timeZero); herr != nil {
				errs = append(errs, fmt.Errorf("plan %s: restore_post hook %d: %w", name, i+1, herr))
			}
		}
		if err == nil {
			a.log.Info("restored", "job", c.Job, "plan", name, "snapshot", id)
		}
	}
	return errors.Join(errs...)
}

// checkIncludes lets a director narrow a paths restore, never widen it.
func checkIncludes(p Plan, includes []string) error {
	for _, inc := range includes {
		if !filepath.IsAbs(inc) || filepath.Clean(inc) != inc {
			return fmt.Errorf("include %q: want a clean absolute path", inc)
		}
		ok := false
		for _, root := range p.Paths {
			if inc == root || strings.HasPrefix(inc, strings.TrimSuffix(root, "/")+"/") {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("refused: include %q is outside the plan's paths", inc)
		}
	}
	return nil
}

func (a *Agent) bunker(ctx context.Context, r Repository, args ...string) (*exec.Cmd, error) {
	env, err := repoEnv(r)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, a.opts.Bunker, args...)
	cmd.Env = env
	// A child does not outlive the agent: a restarted agent drops what
	// prepare took, and an orphaned upload would read a removed snapshot.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

func (a *Agent) restorePlan(ctx context.Context, name string, p Plan, id string, includes []string) error {
	switch {
	case p.Etcd != nil:
		if p.Etcd.Restore == nil {
			return errors.New("refused: the plan has no etcd restore settings (etcd.restore in agent.yaml)")
		}
		file := filepath.Join(a.opts.StateDir, "restore-"+name+".etcd")
		os.Remove(file)
		defer os.Remove(file)
		if err := a.dumpTo(ctx, p.Repository, id, "/"+p.Etcd.File(), file); err != nil {
			return err
		}
		return etcdRestore(ctx, p.Etcd.Restore, file)
	case p.Postgres != nil:
		// The dump streams from the repository into pg_restore.
		dump, err := a.bunker(ctx, p.Repository, "dump", id, "/"+p.Postgres.File())
		if err != nil {
			return err
		}
		env, err := pgEnv(p.Postgres)
		if err != nil {
			return err
		}
		restore := exec.CommandContext(ctx, p.Postgres.bin("pg_restore"), append([]string{"--clean", "--if-exists", "--exit-on-error"}, p.Postgres.connArgs()...)...)
		restore.Env = env
		pipe, err := dump.StdoutPipe()
		if err != nil {
			return err
		}
		restore.Stdin = pipe
		var dumpErr, restoreErr strings.Builder
		dump.Stderr, restore.Stderr = &dumpErr, &restoreErr
		if err := dump.Start(); err != nil {
			return err
		}
		rerr := restore.Run()
		derr := dump.Wait()
		if derr != nil {
			return fmt.Errorf("read the dump: %v: %s", derr, lastLine(dumpErr.String()))
		}
		if rerr != nil {
			return fmt.Errorf("pg_restore: %v: %s", rerr, lastLine(restoreErr.String()))
		}
		return nil
	default:
		target := p.RestoreTarget
		if target == "" {
			target = "/"
		}
		args := []string{"restore", id, "--target", target}
		for _, inc := range includes {
			args = append(args, "--include", inc)
		}
		cmd, err := a.bunker(ctx, p.Repository, args...)
		if err != nil {
			return err
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("restore: %v: %s", err, lastLine(string(out)))
		}
		return nil
	}
}

// dumpTo writes one file of a snapshot to dst (a new file, mode 0600).
func (a *Agent) dumpTo(ctx context.Context, r Repository, id, path, dst string) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd, err := a.bunker(ctx, r, "dump", id, path)
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("dump %s: %v: %s", path, err, lastLine(stderr.String()))
	}
	return f.Sync()
}

// etcdRestore rebuilds this node's etcd member from the snapshot file with
// etcdutl, etcd's own tool for it (it comes with etcd on its nodes): it
// checks the snapshot's SHA-256 and refuses an existing data directory (the
// restore_pre hook moves the old one aside).
func etcdRestore(ctx context.Context, er *EtcdRestore, file string) error {
	prog := er.Etcdutl
	if prog == "" {
		prog = "etcdutl"
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		return fmt.Errorf("etcd restore needs etcdutl, which comes with etcd (etcd.restore.etcdutl in agent.yaml): %w", err)
	}
	args := []string{"snapshot", "restore", file, "--name", er.Name, "--data-dir", er.DataDir,
		"--initial-advertise-peer-urls", strings.Join(er.PeerURLs, ","), "--initial-cluster", er.InitialCluster}
	if er.InitialClusterToken != "" {
		args = append(args, "--initial-cluster-token", er.InitialClusterToken)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("etcdutl snapshot restore: %v: %s", err, lastLine(out.String()))
	}
	return nil
}
