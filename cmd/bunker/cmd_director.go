package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"bunker/internal/agent"
	"bunker/internal/api"
	"bunker/internal/director"
	"bunker/internal/pki"
	"bunker/internal/ui"
)

func newDirectorCmd(g *globalOptions) *cobra.Command {
	c := &cobra.Command{Use: "director", Short: "The control plane: schedules and orchestrates plans across agents"}
	var cfgFile string
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Run the director",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := director.LoadConfig(cfgFile)
			if err != nil {
				return usageError{err}
			}
			log := slog.New(slog.NewTextHandler(c.ErrOrStderr(), nil))
			d, err := director.New(cfg, director.Options{Log: log, PollTimeout: testDuration("BUNKER_TEST_POLL"), Tick: testDuration("BUNKER_TEST_TICK")})
			if err != nil {
				return err
			}
			defer d.Close()
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancelCause(c.Context())
			defer cancel(nil)
			if cfg.HealthListen != "" {
				hl, err := net.Listen("tcp", cfg.HealthListen)
				if err != nil {
					ln.Close()
					return err
				}
				hs := &http.Server{Handler: d.HealthHandler(), ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = hs.Serve(hl) }()
				defer hs.Close()
			}
			if cfg.Enrol != nil {
				el, err := net.Listen("tcp", cfg.Enrol.Listen)
				if err != nil {
					ln.Close()
					return err
				}
				go func() {
					if err := d.ServeEnrol(ctx, el); err != nil {
						cancel(fmt.Errorf("enrolment listener: %w", err))
					}
				}()
				fmt.Fprintf(c.OutOrStdout(), "enrolment listening on %s\n", el.Addr())
			}
			go d.Schedule(ctx)
			fmt.Fprintf(c.OutOrStdout(), "listening on %s\n", ln.Addr())
			if err := d.Serve(ctx, ln); err != nil {
				return err
			}
			if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	serve.Flags().StringVar(&cfgFile, "config", "", "the director's configuration `file` (director.yaml)")
	_ = serve.MarkFlagRequired("config")
	c.AddCommand(serve)
	return c
}

// testDuration reads a duration only tests set (0 when unset).
func testDuration(name string) time.Duration {
	d, _ := time.ParseDuration(os.Getenv(name))
	return d
}

func newAgentCmd(g *globalOptions) *cobra.Command {
	c := &cobra.Command{Use: "agent", Short: "Run on each node: runs the plans of its own configuration when the director asks"}
	var cfgFile string
	run := &cobra.Command{
		Use:   "run",
		Short: "Connect to the director and run plans when asked",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(cfgFile)
			if err != nil {
				return usageError{err}
			}
			log := slog.New(slog.NewTextHandler(c.ErrOrStderr(), nil))
			a, err := agent.New(cfg, agent.Options{Log: log})
			if err != nil {
				return err
			}
			log.Info("agent started", "node", cfg.Name, "director", cfg.Director)
			return a.Run(c.Context())
		},
	}
	run.Flags().StringVar(&cfgFile, "config", "", "the agent's configuration `file` (agent.yaml)")
	_ = run.MarkFlagRequired("config")

	var enrolURL, tokenFile string
	enrol := &cobra.Command{
		Use:   "enrol",
		Short: "Get this node's certificate from the director with a one-time token",
		Long: `Enrol a new node: the agent makes its key here, sends a certificate request
with a one-time token (from bunker agent token NODE) to the director's
enrolment listener, and writes the key and the certificate to the files of
its configuration's tls section. The token is read from --token-file or
BUNKER_ENROL_TOKEN, never from the command line.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(cfgFile)
			if err != nil {
				return usageError{err}
			}
			if enrolURL == "" {
				return usagef("--enrol-url is required (the director's enrolment listener, https://host:port)")
			}
			token := os.Getenv("BUNKER_ENROL_TOKEN")
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return usagef("--token-file: %v", err)
				}
				token = string(b)
			}
			if strings.TrimSpace(token) == "" {
				return usagef("no token: use --token-file or set BUNKER_ENROL_TOKEN")
			}
			notAfter, err := agent.Enrol(c.Context(), cfg, enrolURL, token)
			if err != nil {
				if errors.Is(err, pki.ErrExists) {
					return usageError{err}
				}
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), map[string]any{"message_type": "agent_enrol", "node": cfg.Name,
					"certificate": cfg.TLS.Cert, "key": cfg.TLS.Key, "not_after": notAfter})
			}
			g.msgf(c, "enrolled node %s: certificate %s (key %s), valid until %s\n", cfg.Name, cfg.TLS.Cert, cfg.TLS.Key, notAfter.Format("2006-01-02"))
			return nil
		},
	}
	enrol.Flags().StringVar(&cfgFile, "config", "", "the agent's configuration `file` (agent.yaml)")
	enrol.Flags().StringVar(&enrolURL, "enrol-url", "", "the director's enrolment listener (`https://host:port`)")
	enrol.Flags().StringVar(&tokenFile, "token-file", "", "`file` holding the one-time token (or env BUNKER_ENROL_TOKEN)")
	_ = enrol.MarkFlagRequired("config")

	var dc directorClient
	var ttl string
	token := &cobra.Command{
		Use:   "token NODE",
		Short: "Ask the director for a one-time token that enrols NODE (operator)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var tok api.EnrolToken
			if err := dc.do(c.Context(), http.MethodPost, api.PathEnrolToken, api.EnrolTokenRequest{Node: args[0], TTL: ttl}, &tok); err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), tok)
			}
			// The token alone on stdout (for a file or a secret store); the
			// rest on stderr.
			fmt.Fprintln(c.OutOrStdout(), tok.Token)
			fmt.Fprintf(c.ErrOrStderr(), "one-time enrolment token for node %s, usable until %s: on the node, bunker agent enrol --config agent.yaml --enrol-url https://DIRECTOR:PORT --token-file FILE\n",
				tok.Node, tok.Expires.Local().Format("2006-01-02 15:04:05"))
			return nil
		},
	}
	token.Flags().StringVar(&ttl, "ttl", "", "how long the token stays usable (`duration`, default the director's enrol.token_ttl, 1h)")
	dc.register(token)
	c.AddCommand(run, enrol, token)
	return c
}

// directorClient talks to the director's API with an operator certificate.
type directorClient struct {
	url        string
	ca         string
	cert, key  string
	httpClient *http.Client
}

func (dc *directorClient) register(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&dc.url, "director", "", "the director's `URL` (env BUNKER_DIRECTOR)")
	f.StringVar(&dc.ca, "director-ca", "", "the deployment's CA `file` (env BUNKER_DIRECTOR_CA)")
	f.StringVar(&dc.cert, "director-cert", "", "an operator certificate `file` (bunker pki issue operator NAME; env BUNKER_DIRECTOR_CERT)")
	f.StringVar(&dc.key, "director-key", "", "its key `file` (env BUNKER_DIRECTOR_KEY)")
}

func (dc *directorClient) open() error {
	for _, v := range []struct {
		p   *string
		env string
	}{{&dc.url, "BUNKER_DIRECTOR"}, {&dc.ca, "BUNKER_DIRECTOR_CA"}, {&dc.cert, "BUNKER_DIRECTOR_CERT"}, {&dc.key, "BUNKER_DIRECTOR_KEY"}} {
		if *v.p == "" {
			*v.p = os.Getenv(v.env)
		}
		if *v.p == "" {
			return usagef("no %s: use --%s or set %s", strings.ToLower(strings.TrimPrefix(v.env, "BUNKER_")), strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(v.env, "BUNKER_")), "_", "-"), v.env)
		}
	}
	if u, err := url.Parse(dc.url); err != nil || u.Scheme != "https" {
		return usagef("--director %q: want https://host:port", dc.url)
	}
	caPEM, err := pki.ReadCA(dc.ca)
	if err != nil {
		return err
	}
	tlsCfg, err := pki.ClientTLS(caPEM, dc.cert, dc.key)
	if err != nil {
		return err
	}
	dc.httpClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}, Timeout: 30 * time.Second}
	return nil
}

func (dc *directorClient) do(ctx context.Context, method, path string, body, out any) error {
	if err := dc.open(); err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(dc.url, "/")+path, rd)
	if err != nil {
		return err
	}
	resp, err := dc.httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("director: %w", err)
	}
	defer resp.Body.Close()
	lr := io.LimitReader(resp.Body, api.MaxBody)
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		_ = json.NewDecoder(lr).Decode(&e)
		err := fmt.Errorf("director: %s", e.Error)
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusConflict {
			return usageError{err}
		}
		return err
	}
	return json.NewDecoder(lr).Decode(out)
}

// wait polls a job until it ends, then prints it (errJobFailed if it did
// not succeed).
func (dc *directorClient) wait(c *cobra.Command, g *globalOptions, job *api.Job) error {
	for job.State == api.JobRunning {
		select {
		case <-c.Context().Done():
			return c.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
		if err := dc.do(c.Context(), http.MethodGet, api.PathJob+"?id="+url.QueryEscape(job.ID), nil, job); err != nil {
			return err
		}
	}
	return printJob(c, g, job)
}

func newPlanCmd(g *globalOptions) *cobra.Command {
	var dc directorClient
	c := &cobra.Command{Use: "plan", Short: "The director's plans: list them, run one now"}
	dc.register(c)
	list := &cobra.Command{
		Use:   "list",
		Short: "List the plans, their nodes and which agents are connected",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var plans []api.Plan
			if err := dc.do(c.Context(), http.MethodGet, api.PathPlans, nil, &plans); err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), plans)
			}
			var rows [][]string
			for _, p := range plans {
				last := "never"
				if p.LastSuccess != nil {
					last = p.LastSuccess.Local().Format("2006-01-02 15:04:05")
				}
				rows = append(rows, []string{p.Name, nodesOf(p.Nodes), strings.Join(p.Connected, ","), p.Schedule, p.RPO, last})
			}
			ui.Table(c.OutOrStdout(), []string{"Plan", "Nodes", "Connected", "Schedule", "RPO", "Last success"}, rows)
			return nil
		},
	}
	var wait bool
	run := &cobra.Command{
		Use:   "run NAME",
		Short: "Run a plan now",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var job api.Job
			if err := dc.do(c.Context(), http.MethodPost, api.PathRun, api.RunRequest{Plan: args[0]}, &job); err != nil {
				return err
			}
			if !wait {
				if g.json {
					return printJSON(c.OutOrStdout(), job)
				}
				g.msgf(c, "started job %s of plan %s\n", job.ID, job.Plan)
				return nil
			}
			return dc.wait(c, g, &job)
		},
	}
	run.Flags().BoolVar(&wait, "wait", false, "wait for the job to end and show it (exit 1 if it failed)")
	c.AddCommand(list, run)
	return c
}

func nodesOf(m map[string][]string) string {
	var parts []string
	for n, ps := range m {
		parts = append(parts, n+"("+strings.Join(ps, ",")+")")
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

var errJobFailed = errors.New("the job did not succeed")

func printJob(c *cobra.Command, g *globalOptions, j *api.Job) error {
	if g.json {
		if err := printJSON(c.OutOrStdout(), j); err != nil {
			return err
		}
	} else {
		w := c.OutOrStdout()
		fmt.Fprintf(w, "job %s of plan %s: %s (phase %s)\n", j.ID, j.Plan, j.State, j.Phase)
		if j.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", j.Error)
		}
		var nodes []string
		for n := range j.Nodes {
			nodes = append(nodes, n)
		}
		sort.Strings(nodes)
		for _, n := range nodes {
			r := j.Nodes[n]
			fmt.Fprintf(w, "  %s: prepared=%v thawed=%v snapshots=%v %s\n", n, r.Prepared, r.Thawed, r.Snapshots, r.Error)
		}
	}
	if j.State == api.JobFailed || j.State == api.JobCanceled {
		return errJobFailed
	}
	return nil
}

func newJobCmd(g *globalOptions) *cobra.Command {
	var dc directorClient
	c := &cobra.Command{Use: "job", Short: "The director's jobs: list, show, cancel"}
	dc.register(c)
	list := &cobra.Command{
		Use: "list", Short: "List recent jobs", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var jobs []api.Job
			if err := dc.do(c.Context(), http.MethodGet, api.PathJobs, nil, &jobs); err != nil {
				return err
			}
			if g.json {
				return printJSON(c.OutOrStdout(), jobs)
			}
			var rows [][]string
			for _, j := range jobs {
				rows = append(rows, []string{j.ID, j.Plan, j.State, j.Phase, j.Started.Local().Format("2006-01-02 15:04:05"), j.Error})
			}
			ui.Table(c.OutOrStdout(), []string{"Job", "Plan", "State", "Phase", "Started", "Error"}, rows)
			return nil
		},
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show one job", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var j api.Job
			if err := dc.do(c.Context(), http.MethodGet, api.PathJob+"?id="+url.QueryEscape(args[0]), nil, &j); err != nil {
				return err
			}
			return printJob(c, g, &j)
		},
	}
	cancel := &cobra.Command{
		Use: "cancel ID", Short: "Cancel a running job (every node thaws and drops its part)", Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var out struct{}
			if err := dc.do(c.Context(), http.MethodPost, api.PathCancel+"?id="+url.QueryEscape(args[0]), nil, &out); err != nil {
				return err
			}
			g.msgf(c, "canceled job %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(list, show, cancel)
	return c
}

// groupRestore is `bunker restore --plan NAME --group JOB`.
type groupRestore struct {
	dc          directorClient
	plan, group string
	nodes, maps []string
	wait        bool
}

func (gr *groupRestore) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&gr.plan, "plan", "", "restore a group of this director `plan` (with --group)")
	f.StringVar(&gr.group, "group", "", "the `job` ID of the group to restore (bunker job list)")
	f.StringArrayVar(&gr.nodes, "node", nil, "restore only this `node`'s part (repeatable)")
	f.StringArrayVar(&gr.maps, "map", nil, "restore node `old=new`: old's snapshots through new's agent (repeatable)")
	f.BoolVar(&gr.wait, "wait", false, "wait for the restore to end and show it (exit 1 if it failed)")
	gr.dc.register(c)
}

func (gr *groupRestore) run(c *cobra.Command, g *globalOptions, includes []string) error {
	if gr.plan == "" || gr.group == "" {
		return usagef("--plan and --group go together")
	}
	req := api.RestoreRequest{Plan: gr.plan, Group: gr.group, Nodes: gr.nodes, Includes: includes, Map: map[string]string{}}
	for _, m := range gr.maps {
		from, to, ok := strings.Cut(m, "=")
		if !ok || from == "" || to == "" {
			return usagef("--map %q: want old=new", m)
		}
		req.Map[from] = to
	}
	var job api.Job
	if err := gr.dc.do(c.Context(), http.MethodPost, api.PathRestore, req, &job); err != nil {
		return err
	}
	if !gr.wait {
		if g.json {
			return printJSON(c.OutOrStdout(), job)
		}
		g.msgf(c, "started restore job %s of group %s\n", job.ID, job.Group)
		return nil
	}
	return gr.dc.wait(c, g, &job)
}
