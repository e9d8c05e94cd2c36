package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// pgSnapshot is an open transaction that exported its snapshot at the
// freeze: pg_dump --snapshot then reads the database exactly as it was at
// that instant, however long the upload takes and whatever is written
// meanwhile. It needs psql and pg_dump (Debian: postgresql-client) and a
// role that may connect and read everything to back up (pg_read_all_data).
type pgSnapshot struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	id    string
}

var snapshotIDRE = regexp.MustCompile(`^[0-9A-F]+-[0-9A-F]+-[0-9]+$`)

// pgEnv is the environment of psql and pg_dump: the password from its file.
func pgEnv(p *Postgres) ([]string, error) {
	env := os.Environ()
	if p.PasswordFile != "" {
		b, err := os.ReadFile(p.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("postgres password file: %w", err)
		}
		env = append(env, "PGPASSWORD="+strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r"))
	}
	return env, nil
}

func (p *Postgres) bin(name string) string {
	if p.BinDir != "" {
		return filepath.Join(p.BinDir, name)
	}
	return name
}

// connArgs are the connection options of psql and pg_dump (no secrets).
func (p *Postgres) connArgs() []string {
	var args []string
	if p.Host != "" {
		args = append(args, "--host", p.Host)
	}
	if p.Port != 0 {
		args = append(args, "--port", strconv.Itoa(p.Port))
	}
	if p.User != "" {
		args = append(args, "--username", p.User)
	}
	return append(args, "--no-password", "--dbname", p.Database)
}

// exportSnapshot opens the transaction and returns its snapshot.
func exportSnapshot(ctx context.Context, p *Postgres) (*pgSnapshot, error) {
	env, err := pgEnv(p)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.bin("psql"), append([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, p.connArgs()...)...)
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("postgres: %w (is postgresql-client installed?)", err)
	}
	s := &pgSnapshot{cmd: cmd, stdin: stdin}
	if _, err := io.WriteString(stdin, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n"); err != nil {
		s.end()
		return nil, err
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- strings.TrimSpace(sc.Text())
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case id, ok := <-line:
		if !ok || !snapshotIDRE.MatchString(id) {
			s.end()
			return nil, fmt.Errorf("postgres: no snapshot exported: %s", lastLine(stderr.String()))
		}
		s.id = id
		return s, nil
	case <-ctx.Done():
		s.end()
		return nil, fmt.Errorf("postgres: %w", ctx.Err())
	}
}

// end commits the read-only transaction and stops psql.
func (s *pgSnapshot) end() {
	_, _ = io.WriteString(s.stdin, "COMMIT;\n\\q\n")
	s.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// dumpCommand is the pg_dump of the snapshot, for bunker backup
// --stdin-from-command.
func (p *Postgres) dumpCommand(snapshot string) []string {
	return append([]string{p.bin("pg_dump"), "--format=custom", "--snapshot=" + snapshot}, p.connArgs()...)
}

var errNoPGSnapshot = errors.New("no PostgreSQL snapshot was exported for this job (was the agent restarted?)")
