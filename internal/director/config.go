package director

import (
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"bunker/internal/conf"
	"bunker/internal/pki"
	"bunker/internal/policy"
)

// Config is the director's configuration file (director.yaml).
type Config struct {
	// Listen is host:port for agents and the CLI (mutual TLS on both).
	Listen string `yaml:"listen"`
	// HealthListen, if set, serves /healthz and /readyz without
	// authentication (keep it on a local or probe-only address).
	HealthListen string `yaml:"health_listen"`
	TLS          TLS    `yaml:"tls"`
	// State is the job store (a bbolt file).
	State        string                `yaml:"state"`
	Repositories map[string]Repository `yaml:"repositories"`
	Nodes        map[string]Node       `yaml:"nodes"`
	Plans        map[string]Plan       `yaml:"plans"`
	// Enrol, if set, lets a new agent get its certificate with a one-time
	// token (bunker agent token / bunker agent enrol) instead of files
	// carried from the CA's machine.
	Enrol *Enrol `yaml:"enrol"`
}

// Enrol configures the enrolment listener. It needs the CA's key: the
// director then signs agent certificates itself (only ever for a node of
// this file, with the agent role, against a token an operator asked for).
type Enrol struct {
	// Listen is host:port of the enrolment listener (TLS, no client
	// certificate: the token is the proof).
	Listen string `yaml:"listen"`
	// CAKey is the CA's key file (the certificate is tls.ca).
	CAKey string `yaml:"ca_key"`
	// TokenTTL is how long a token stays usable when its request gives no
	// lifetime (default 1h, at most 7 days).
	TokenTTL conf.Duration `yaml:"token_ttl"`
}

// Token lifetimes.
const (
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 7 * 24 * time.Hour
)

// TLS names the director's certificate files and the revoked serials.
type TLS struct {
	CA      string   `yaml:"ca"`
	Cert    string   `yaml:"cert"`
	Key     string   `yaml:"key"`
	Revoked []string `yaml:"revoked"`
}

// Repository is a repository the director runs retention and copies on.
// Secrets are referenced by file, never written here.
type Repository struct {
	Location        string `yaml:"location"`
	PasswordFile    string `yaml:"password_file"`
	CredentialsFile string `yaml:"credentials_file"`
	CACert          string `yaml:"cacert"`
}

// Node is a machine running an agent; its name is its certificate's.
type Node struct {
	Description string `yaml:"description"`
}

// Plan is a backup of one or more nodes taken at one instant.
type Plan struct {
	// Nodes maps each node to the names of the agent plans it contributes
	// (each defined in that node's agent.yaml).
	Nodes map[string][]string `yaml:"nodes"`
	// Schedule is a cron expression (5 fields, or @daily and the like).
	Schedule string `yaml:"schedule"`
	// RPO is the longest time without a committed group; the director
	// runs the plan when the last success is older.
	RPO        conf.Duration `yaml:"rpo"`
	Repository string        `yaml:"repository"`
	Retention  Retention     `yaml:"retention"`
	// CopyTo is the repository of the off-site copy, if any.
	CopyTo string `yaml:"copy_to"`
	// FreezeTimeout bounds prepare + barrier: past it, every node thaws and
	// the run fails. Default 30 s.
	FreezeTimeout conf.Duration `yaml:"freeze_timeout"`
}

// Retention is a plan's retention policy, applied after each group commit.
type Retention struct {
	KeepLast    int    `yaml:"keep_last"`
	KeepHourly  int    `yaml:"keep_hourly"`
	KeepDaily   int    `yaml:"keep_daily"`
	KeepWeekly  int    `yaml:"keep_weekly"`
	KeepMonthly int    `yaml:"keep_monthly"`
	KeepYearly  int    `yaml:"keep_yearly"`
	KeepWithin  string `yaml:"keep_within"`
}

// Policy converts the retention to a policy (zero: keep everything).
func (r Retention) Policy() (policy.Policy, error) {
	p := policy.Policy{Last: r.KeepLast, Hourly: r.KeepHourly, Daily: r.KeepDaily, Weekly: r.KeepWeekly, Monthly: r.KeepMonthly, Yearly: r.KeepYearly}
	if r.KeepWithin != "" {
		d, err := policy.ParseDuration(r.KeepWithin)
		if err != nil {
			return p, err
		}
		p.Within = d
	}
	if p.IsEmpty() {
		return p, nil
	}
	return p, p.Validate()
}

// DefaultFreezeTimeout bounds prepare and barrier when a plan sets none.
const DefaultFreezeTimeout = 30 * time.Second

// LoadConfig reads and checks a director configuration file. The error
// lists every problem with its line.
func LoadConfig(path string) (*Config, error) {
	return conf.LoadChecked(path, (*Config).check)
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a plan's cron expression.
func ParseSchedule(s string) (cron.Schedule, error) { return cronParser.Parse(s) }

func (c *Config) check(doc *conf.Doc) conf.Errors {
	var errs conf.Errors
	bad := func(path []string, format string, args ...any) {
		errs = append(errs, doc.Errorf(path, format, args...))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad([]string{"listen"}, "want host:port, got %q", c.Listen)
	}
	if _, _, err := net.SplitHostPort(c.HealthListen); c.HealthListen != "" && err != nil {
		bad([]string{"health_listen"}, "want host:port, got %q", c.HealthListen)
	}
	for _, f := range []struct{ key, v string }{{"ca", c.TLS.CA}, {"cert", c.TLS.Cert}, {"key", c.TLS.Key}} {
		if f.v == "" {
			bad([]string{"tls", f.key}, "a file is required (see `bunker pki`)")
		}
	}
	if e := c.Enrol; e != nil {
		if _, _, err := net.SplitHostPort(e.Listen); err != nil {
			bad([]string{"enrol", "listen"}, "want host:port, got %q", e.Listen)
		} else if e.Listen == c.Listen || e.Listen == c.HealthListen {
			bad([]string{"enrol", "listen"}, "a port of its own (not the API's or the health listener's)")
		}
		if e.CAKey == "" {
			bad([]string{"enrol", "ca_key"}, "the CA's key file is required to sign agent certificates")
		}
		if ttl := time.Duration(e.TokenTTL); ttl != 0 && (ttl < time.Minute || ttl > MaxTokenTTL) {
			bad([]string{"enrol", "token_ttl"}, "between 1m and 168h")
		}
	}
	if _, err := pki.NewRevocations(c.TLS.Revoked...); err != nil {
		bad([]string{"tls", "revoked"}, "%v", err)
	}
	if c.State == "" {
		bad([]string{"state"}, "a file for the job store is required")
	}
	for _, name := range sortedKeys(c.Repositories) {
		r := c.Repositories[name]
		if r.Location == "" {
			bad([]string{"repositories", name, "location"}, "required")
		}
		if r.PasswordFile == "" {
			bad([]string{"repositories", name, "password_file"}, "required (the password is never written in this file)")
		}
	}
	for _, name := range sortedKeys(c.Nodes) {
		if err := pki.CheckName(name); err != nil {
			bad([]string{"nodes", name}, "%v", err)
		}
	}
	if len(c.Plans) == 0 {
		bad([]string{"plans"}, "no plan")
	}
	for _, name := range sortedKeys(c.Plans) {
		p := c.Plans[name]
		at := func(keys ...string) []string { return append([]string{"plans", name}, keys...) }
		if err := pki.CheckName(name); err != nil {
			bad(at(), "%v", err)
		}
		if len(p.Nodes) == 0 {
			bad(at("nodes"), "a plan needs at least one node")
		}
		for _, node := range sortedKeys(p.Nodes) {
			if _, ok := c.Nodes[node]; !ok {
				bad(at("nodes", node), "unknown node %q (nodes: %s)", node, strings.Join(sortedKeys(c.Nodes), ", "))
			}
			if len(p.Nodes[node]) == 0 {
				bad(at("nodes", node), "name the agent plans this node contributes")
			}
			seen := map[string]bool{}
			for _, ap := range p.Nodes[node] {
				if err := pki.CheckName(ap); err != nil {
					bad(at("nodes", node), "agent plan %v", err)
				}
				if seen[ap] {
					bad(at("nodes", node), "agent plan %q named twice", ap)
				}
				seen[ap] = true
			}
		}
		if p.Schedule == "" && p.RPO == 0 {
			bad(at(), "give a schedule, an rpo, or both")
		}
		if p.Schedule != "" {
			if _, err := ParseSchedule(p.Schedule); err != nil {
				bad(at("schedule"), "not a cron expression: %v", err)
			}
		}
		if p.RPO != 0 && time.Duration(p.RPO) < time.Minute {
			bad(at("rpo"), "at least 1m")
		}
		if _, ok := c.Repositories[p.Repository]; !ok {
			bad(at("repository"), "unknown repository %q (repositories: %s)", p.Repository, strings.Join(sortedKeys(c.Repositories), ", "))
		}
		if p.CopyTo != "" {
			if _, ok := c.Repositories[p.CopyTo]; !ok {
				bad(at("copy_to"), "unknown repository %q", p.CopyTo)
			} else if p.CopyTo == p.Repository {
				bad(at("copy_to"), "the copy must go to another repository than %q", p.Repository)
			}
		}
		if _, err := p.Retention.Policy(); err != nil {
			bad(at("retention"), "%v", err)
		}
		if ft := time.Duration(p.FreezeTimeout); ft != 0 && (ft < time.Second || ft > 10*time.Minute) {
			bad(at("freeze_timeout"), "between 1s and 10m")
		}
	}
	return errs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return slices.Clip(keys)
}
