package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// postgresServer is a PostgreSQL server (Debian's binaries) started by a
// test on 127.0.0.1 as the unprivileged user nobody (the server refuses
// to run as root), with trust authentication.
type postgresServer struct {
	bin  string
	port int
}

func startPostgres(t *testing.T) *postgresServer {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("PostgreSQL is not installed (make test installs the Debian package postgresql)")
		}
		t.Skip("PostgreSQL is not installed (apt-get install postgresql)")
	}
	bin := filepath.Dir(bins[len(bins)-1])
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	base, err := os.MkdirTemp("", "bunker-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	run := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		c.Dir = base
		return c
	}
	if out, err := run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	_, portStr, _ := strings.Cut(freePort(t), ":")
	port, _ := strconv.Atoi(portStr)
	srv := run("postgres", "-D", data, "-p", portStr, "-k", base, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	log := &lockedBuf{}
	srv.Stdout, srv.Stderr = log, log
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGINT)
		_ = srv.Wait()
	})
	pg := &postgresServer{bin: bin, port: port}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if exec.Command(filepath.Join(bin, "pg_isready"), "-h", "127.0.0.1", "-p", portStr, "-q").Run() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL did not start:\n%s", log)
		}
	}
	return pg
}

// sql runs statements in a database and returns psql's unaligned output.
func (pg *postgresServer) sql(t *testing.T, db, stmts string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(pg.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
		"-p", strconv.Itoa(pg.port), "-U", "postgres", "-d", db, "-c", stmts).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", stmts, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestDirectorPostgres: a plan dumps a database as it was at the freeze
// (pg_dump of a snapshot exported at prepare, streamed into the
// repository); rows written after the barrier are not in it. The database
// is destroyed and restored from the group's dump.
func TestDirectorPostgres(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t)
	pg.sql(t, "postgres", "CREATE DATABASE app")
	pg.sql(t, "app", "CREATE TABLE orders (id int PRIMARY KEY, note text); INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 100) g")
	dp := newDeployment(t, []string{"db1"}, `  db:
    nodes: {db1: [app]}
    schedule: "0 0 1 1 *"
    repository: main
`, func(dp *deployment, n string) string {
		return fmt.Sprintf(`  app:
    repository: {location: %s, password_file: %s}
    postgres: {host: 127.0.0.1, port: %d, user: postgres, database: app, bin_dir: %s}
    post: [{exec: [/bin/sh, -c, "touch %s/thawed-%s"]}]
`, dp.repo.repo, dp.repo.pwFile, pg.port, pg.bin, dp.dir, n)
	})
	dp.startDirector()
	dp.startAgents()
	job := dp.runPlan(0, "db", false)
	dp.waitFor("the thaw", func() bool { _, err := os.Stat(filepath.Join(dp.dir, "thawed-db1")); return err == nil })
	pg.sql(t, "app", "INSERT INTO orders SELECT g, 'after' FROM generate_series(101, 150) g")
	done := dp.waitJob(job.ID)
	if done.State != "succeeded" {
		t.Fatalf("job: %+v\nagent log:\n%s", done, dp.logs["db1"])
	}
	// Destroy the database, then restore it from the group.
	pg.sql(t, "postgres", "DROP DATABASE app")
	pg.sql(t, "postgres", "CREATE DATABASE app")
	r := dp.repo.run("dump", done.Nodes["db1"].Snapshots["app"], "/app.dump")
	if r.code != 0 {
		t.Fatalf("dump: %s", r.stderr)
	}
	dump := filepath.Join(t.TempDir(), "app.dump")
	writeFile(t, dump, r.stdout)
	if out, err := exec.Command(filepath.Join(pg.bin, "pg_restore"), "-h", "127.0.0.1", "-p", strconv.Itoa(pg.port), "-U", "postgres",
		"-d", "app", "--exit-on-error", dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	if got := pg.sql(t, "app", "SELECT count(*), count(*) FILTER (WHERE note = 'after') FROM orders"); got != "100|0" {
		t.Errorf("restored rows (all|after the barrier): %s, want 100|0", got)
	}
}
