package agent

import (
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"bunker/internal/conf"
	"bunker/internal/pki"
)

// Config is an agent's configuration file (agent.yaml). Everything an
// agent may run is here: the director can only name one of these plans.
type Config struct {
	// Name is this node's name; it must be the name in the certificate.
	Name string `yaml:"name"`
	// Director is the director's URL (https://host:port).
	Director string `yaml:"director"`
	TLS      TLS    `yaml:"tls"`
	// ThawDeadline: once frozen, the agent thaws by itself after this long
	// whatever the director says or does. Default 30 s.
	ThawDeadline conf.Duration `yaml:"thaw_deadline"`
	// StateDir holds what prepare takes until its upload (etcd snapshots);
	// default /var/lib/bunker/agent-<name>. It must be private (0700).
	StateDir string          `yaml:"state_dir"`
	Plans    map[string]Plan `yaml:"plans"`
}

// TLS names the agent's certificate files.
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Repository is where a plan's snapshots go, with the node's own
// (append-only) credential, referenced by file.
type Repository struct {
	Location        string `yaml:"location"`
	PasswordFile    string `yaml:"password_file"`
	CredentialsFile string `yaml:"credentials_file"`
	CACert          string `yaml:"cacert"`
}

// Plan is what this node contributes to a director's plan.
type Plan struct {
	Repository Repository `yaml:"repository"`
	// Paths are backed up (after the pre hooks, from the snapshots the
	// providers made).
	Paths    []string `yaml:"paths"`
	Excludes []string `yaml:"excludes"`
	Tags     []string `yaml:"tags"`
	// LimitUpload bounds the upload's bandwidth to the repository, in
	// KiB/s (0: unlimited), so that it does not crowd the node's services.
	LimitUpload int `yaml:"limit_upload"`
	// Pre hooks run at prepare (in order), post hooks at thaw (in reverse).
	Pre  []Hook `yaml:"pre"`
	Post []Hook `yaml:"post"`
	// RestorePre hooks run before a restore (stop the service), RestorePost
	// after it, whatever its outcome (start it again).
	RestorePre  []Hook `yaml:"restore_pre"`
	RestorePost []Hook `yaml:"restore_post"`
	// RestoreTarget is where a paths plan restores (default /, the
	// original place).
	RestoreTarget string `yaml:"restore_target"`
	// Etcd, instead of paths: a snapshot of the cluster taken at prepare
	// (after the pre hooks) and stored as one file.
	Etcd *Etcd `yaml:"etcd"`
	// Postgres, instead of paths: a pg_dump of the database as it was at
	// the freeze (an exported snapshot), streamed into the repository.
	Postgres *Postgres `yaml:"postgres"`
	// Docker pauses containers from after the pre hooks until the thaw.
	Docker *Docker `yaml:"docker"`
	// FSFreeze freezes these mounted filesystems from after the pre hooks
	// (and the pause) until the thaw; it goes with an lvm snapshot.
	FSFreeze []string `yaml:"fsfreeze"`
	// Snapshot takes a filesystem snapshot at the freeze; the paths are
	// then read from it, after the thaw, as they were at the freeze.
	Snapshot *Snapshot `yaml:"snapshot"`
}

// Docker names the containers to pause through the Docker Engine API.
type Docker struct {
	// Socket is the API's unix socket (default /var/run/docker.sock).
	Socket string `yaml:"socket"`
	// Containers are names or IDs; Labels select more (key or key=value:
	// every running container carrying one of them).
	Containers []string `yaml:"containers"`
	Labels     []string `yaml:"labels"`
}

// DefaultDockerSocket is where the Docker daemon listens by default.
const DefaultDockerSocket = "/var/run/docker.sock"

// SocketPath is the API socket to use.
func (d *Docker) SocketPath() string {
	if d.Socket == "" {
		return DefaultDockerSocket
	}
	return d.Socket
}

// Snapshot kinds.
const (
	SnapshotBtrfs = "btrfs"
	SnapshotLVM   = "lvm"
	SnapshotZFS   = "zfs"
)

// Snapshot is a filesystem snapshot the paths are read from.
type Snapshot struct {
	// Type is btrfs, lvm or zfs.
	Type string `yaml:"type"`
	// Source is what to snapshot: a btrfs subvolume's path, an LVM logical
	// volume (vg/lv), or a ZFS dataset (pool/fs).
	Source string `yaml:"source"`
	// MountPoint is where Source is mounted (lvm, zfs; a btrfs subvolume
	// is its own). Every path of the plan is within it.
	MountPoint string `yaml:"mount_point"`
	// Size is the copy-on-write space of an LVM snapshot (lvcreate
	// --size, such as 2G; default 20% of the origin).
	Size string `yaml:"size"`
}

// Root is the directory the plan's paths live under.
func (s *Snapshot) Root() string {
	if s.Type == SnapshotBtrfs && s.MountPoint == "" {
		return filepath.Clean(s.Source)
	}
	return filepath.Clean(s.MountPoint)
}

var (
	lvmVolumeRE  = regexp.MustCompile(`^[A-Za-z0-9_.+][A-Za-z0-9_.+-]*/[A-Za-z0-9_.+][A-Za-z0-9_.+-]*$`)
	lvmSizeRE    = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?[bBsSkKmMgGtTpPeE]?$`)
	zfsDatasetRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]*$`)
	containerRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	labelRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_./-]*(=[^,\x00]*)?$`)
)

// within reports whether path is root or below it.
func within(path, root string) bool {
	path, root = filepath.Clean(path), filepath.Clean(root)
	return path == root || root == "/" || strings.HasPrefix(path, root+"/")
}

func (p *Plan) checkProviders(bad func(path []string, format string, args ...any), at func(keys ...string) []string) {
	if d := p.Docker; d != nil {
		if d.Socket != "" && !filepath.IsAbs(d.Socket) {
			bad(at("docker", "socket"), "an absolute path to the API's unix socket")
		}
		if len(d.Containers) == 0 && len(d.Labels) == 0 {
			bad(at("docker"), "name containers, labels, or both")
		}
		for _, c := range d.Containers {
			if !containerRE.MatchString(c) {
				bad(at("docker", "containers"), "%q is not a container name or ID", c)
			}
		}
		for _, l := range d.Labels {
			if !labelRE.MatchString(l) {
				bad(at("docker", "labels"), "%q: want key or key=value", l)
			}
		}
	}
	for _, m := range p.FSFreeze {
		if !filepath.IsAbs(m) || m == "/" {
			bad(at("fsfreeze"), "%q: want the absolute mount point of a filesystem other than /", m)
		}
	}
	if len(p.FSFreeze) > 0 && p.Snapshot == nil {
		// The paths are read after the thaw: a freeze alone holds nothing
		// for them. With a snapshot, the freeze (taken after it) holds the
		// filesystem still from the snapshot until the group's thaw.
		bad(at("fsfreeze"), "goes with a snapshot (the paths are read after the thaw, from the snapshot)")
	}
	s := p.Snapshot
	if s == nil {
		return
	}
	if len(p.Paths) == 0 {
		bad(at("snapshot"), "a snapshot is for a paths plan")
	}
	switch s.Type {
	case SnapshotBtrfs:
		if !filepath.IsAbs(s.Source) || filepath.Clean(s.Source) == "/" {
			bad(at("snapshot", "source"), "the absolute path of a btrfs subvolume other than /")
		}
		if s.MountPoint != "" && filepath.Clean(s.MountPoint) != filepath.Clean(s.Source) {
			bad(at("snapshot", "mount_point"), "a btrfs subvolume is its own mount point: leave it out")
		}
	case SnapshotLVM:
		if !lvmVolumeRE.MatchString(s.Source) {
			bad(at("snapshot", "source"), "want a logical volume as vg/lv, got %q", s.Source)
		}
		if s.Size != "" && !lvmSizeRE.MatchString(s.Size) {
			bad(at("snapshot", "size"), "want an lvcreate size such as 2G, got %q", s.Size)
		}
	case SnapshotZFS:
		if !zfsDatasetRE.MatchString(s.Source) || strings.Contains(s.Source, "@") {
			bad(at("snapshot", "source"), "want a dataset as pool/fs, got %q", s.Source)
		}
	default:
		bad(at("snapshot", "type"), "want btrfs, lvm or zfs, got %q", s.Type)
	}
	if s.Type == SnapshotLVM || s.Type == SnapshotZFS {
		if !filepath.IsAbs(s.MountPoint) || filepath.Clean(s.MountPoint) == "/" {
			bad(at("snapshot", "mount_point"), "the absolute directory where %s is mounted (not /)", s.Source)
		}
	}
	if s.Type != SnapshotLVM && s.Size != "" {
		bad(at("snapshot", "size"), "only for an lvm snapshot")
	}
	if filepath.IsAbs(s.Root()) {
		for _, path := range p.Paths {
			if !within(path, s.Root()) {
				bad(at("paths"), "%q is not within the snapshot's %s", path, s.Root())
			}
		}
	}
}

// Postgres dumps one database through an exported snapshot.
type Postgres struct {
	Host         string `yaml:"host"` // a host name, address or socket directory
	Port         int    `yaml:"port"`
	User         string `yaml:"user"`
	Database     string `yaml:"database"`
	PasswordFile string `yaml:"password_file"`
	// BinDir holds psql and pg_dump (default: found in PATH).
	BinDir string `yaml:"bin_dir"`
	// Filename is the dump's name in the backup (default <database>.dump).
	Filename string `yaml:"filename"`
}

// File is the name the dump is stored under.
func (p *Postgres) File() string {
	if p.Filename == "" {
		return p.Database + ".dump"
	}
	return p.Filename
}

// Etcd takes a snapshot through the etcd v3 maintenance API.
type Etcd struct {
	Endpoints []string `yaml:"endpoints"`
	CACert    string   `yaml:"cacert"`
	Cert      string   `yaml:"cert"`
	Key       string   `yaml:"key"`
	// Filename is the snapshot's name in the backup (default etcd.snapshot).
	Filename string `yaml:"filename"`
	// Restore says how this node's member is rebuilt from a snapshot.
	Restore *EtcdRestore `yaml:"restore"`
}

// EtcdRestore is what etcdutl snapshot restore needs for this member.
type EtcdRestore struct {
	Name                string   `yaml:"name"`
	DataDir             string   `yaml:"data_dir"`
	PeerURLs            []string `yaml:"peer_urls"`
	InitialCluster      string   `yaml:"initial_cluster"`
	InitialClusterToken string   `yaml:"initial_cluster_token"`
	// Etcdutl is the etcdutl program (it comes with etcd) that rebuilds
	// the member: a path, or a name looked up in PATH (default etcdutl).
	Etcdutl string `yaml:"etcdutl"`
}

// File is the name the snapshot is stored under.
func (e *Etcd) File() string {
	if e.Filename == "" {
		return "etcd.snapshot"
	}
	return e.Filename
}

// Hook is a command run with a timeout, as a configured user.
type Hook struct {
	Exec    []string      `yaml:"exec"`
	Timeout conf.Duration `yaml:"timeout"`
	User    string        `yaml:"user"`
}

// DefaultThawDeadline is how long a node stays frozen at most by default.
const DefaultThawDeadline = 30 * time.Second

// LoadConfig reads and checks an agent configuration file. The error
// lists every problem with its line.
func LoadConfig(path string) (*Config, error) {
	return conf.LoadChecked(path, (*Config).check)
}

func (c *Config) check(doc *conf.Doc) conf.Errors {
	var errs conf.Errors
	bad := func(path []string, format string, args ...any) {
		errs = append(errs, doc.Errorf(path, format, args...))
	}
	if err := pki.CheckName(c.Name); err != nil {
		bad([]string{"name"}, "%v", err)
	}
	if u, err := url.Parse(c.Director); err != nil || u.Scheme != "https" || u.Host == "" {
		bad([]string{"director"}, "want https://host:port, got %q", c.Director)
	}
	for _, f := range []struct{ key, v string }{{"ca", c.TLS.CA}, {"cert", c.TLS.Cert}, {"key", c.TLS.Key}} {
		if f.v == "" {
			bad([]string{"tls", f.key}, "a file is required (see `bunker pki`)")
		}
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		bad([]string{"state_dir"}, "an absolute directory")
	}
	if d := time.Duration(c.ThawDeadline); d != 0 && (d < time.Second || d > 10*time.Minute) {
		bad([]string{"thaw_deadline"}, "between 1s and 10m")
	}
	if len(c.Plans) == 0 {
		bad([]string{"plans"}, "no plan")
	}
	names := make([]string, 0, len(c.Plans))
	for n := range c.Plans {
		names = append(names, n)
	}
	sort.Strings(names)
	frozenBy := map[string]string{}
	for _, name := range names {
		p := c.Plans[name]
		at := func(keys ...string) []string { return append([]string{"plans", name}, keys...) }
		if err := pki.CheckName(name); err != nil {
			bad(at(), "%v", err)
		}
		if p.Repository.Location == "" {
			bad(at("repository", "location"), "required")
		}
		if p.Repository.PasswordFile == "" {
			bad(at("repository", "password_file"), "required (the password is never written in this file)")
		}
		sources := 0
		for _, set := range []bool{len(p.Paths) > 0, p.Etcd != nil, p.Postgres != nil} {
			if set {
				sources++
			}
		}
		switch {
		case sources == 0:
			bad(at(), "nothing to back up: give paths, etcd or postgres")
		case sources > 1:
			bad(at(), "a plan backs up one of paths, etcd or postgres (make one plan each)")
		}
		if pg := p.Postgres; pg != nil {
			if pg.Database == "" || strings.HasPrefix(pg.Database, "-") {
				bad(at("postgres", "database"), "required, and not starting with '-'")
			}
			if pg.Port < 0 || pg.Port > 65535 {
				bad(at("postgres", "port"), "not a port: %d", pg.Port)
			}
			if strings.HasPrefix(pg.Host, "-") || strings.HasPrefix(pg.User, "-") {
				bad(at("postgres"), "host and user may not start with '-'")
			}
			if strings.ContainsAny(pg.Filename, "/\x00") {
				bad(at("postgres", "filename"), "a file name, not a path")
			}
			if pg.BinDir != "" && !filepath.IsAbs(pg.BinDir) {
				bad(at("postgres", "bin_dir"), "an absolute directory")
			}
		}
		if e := p.Etcd; e != nil {
			if len(e.Endpoints) == 0 {
				bad(at("etcd", "endpoints"), "at least one endpoint")
			}
			if (e.Cert == "") != (e.Key == "") {
				bad(at("etcd"), "cert and key go together")
			}
			for _, ep := range e.Endpoints {
				if _, _, err := etcdBaseURL(ep, e.CACert != "" || e.Cert != ""); err != nil {
					bad(at("etcd", "endpoints"), "%v", err)
				}
			}
			if strings.ContainsAny(e.Filename, "/\x00") {
				bad(at("etcd", "filename"), "a file name, not a path")
			}
		}
		for i, path := range p.Paths {
			if !filepath.IsAbs(path) {
				bad(at("paths"), "path %d (%q) must be absolute", i+1, path)
			}
		}
		if p.RestoreTarget != "" && !filepath.IsAbs(p.RestoreTarget) {
			bad(at("restore_target"), "an absolute directory")
		}
		if e := p.Etcd; e != nil && e.Restore != nil {
			if e.Restore.Name == "" || !filepath.IsAbs(e.Restore.DataDir) || len(e.Restore.PeerURLs) == 0 || e.Restore.InitialCluster == "" {
				bad(at("etcd", "restore"), "name, an absolute data_dir, peer_urls and initial_cluster are required")
			}
		}
		p.checkProviders(bad, at)
		for _, m := range p.FSFreeze {
			if other := frozenBy[filepath.Clean(m)]; other != "" {
				bad(at("fsfreeze"), "%s is already frozen by plan %s (one plan per filesystem)", m, other)
			}
			frozenBy[filepath.Clean(m)] = name
		}
		if p.LimitUpload < 0 {
			bad(at("limit_upload"), "KiB/s, 0 or more")
		}
		for _, hooks := range []struct {
			key string
			h   []Hook
		}{{"pre", p.Pre}, {"post", p.Post}, {"restore_pre", p.RestorePre}, {"restore_post", p.RestorePost}} {
			for i, h := range hooks.h {
				if len(h.Exec) == 0 || !filepath.IsAbs(h.Exec[0]) {
					bad(at(hooks.key), "hook %d: exec must start with an absolute program path", i+1)
				}
				if d := time.Duration(h.Timeout); d != 0 && (d < 100*time.Millisecond || d > time.Hour) {
					bad(at(hooks.key), "hook %d: timeout between 100ms and 1h", i+1)
				}
			}
		}
	}
	return errs
}

// ThawAfter is the agent's own freeze deadline.
func (c *Config) ThawAfter() time.Duration { return c.ThawDeadline.D(DefaultThawDeadline) }
