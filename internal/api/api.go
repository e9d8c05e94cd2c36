// Package api holds the wire types between the director, its agents and
// the CLI: JSON over HTTPS with mutual TLS. It imports nothing of Bunker's
// so that both ends (and other tools) can use it.
//
// Agents connect out: an agent long-polls PathPoll for commands and posts
// each command's outcome to PathReport. Its node name is the common name of
// its certificate, never a field of a message. A command names plans of
// the agent's own configuration; an agent refuses (and logs) any other.
package api

import "time"

// Version of this protocol; a peer of another version is refused.
const Version = 1

// Agent routes (role agent).
const (
	PathPoll   = "/agent/v1/poll"
	PathReport = "/agent/v1/report"
)

// Operator routes (role operator: the CLI).
const (
	PathPlans   = "/api/v1/plans"   // GET: the plans
	PathRun     = "/api/v1/run"     // POST RunRequest: start a plan now
	PathJobs    = "/api/v1/jobs"    // GET: recent jobs
	PathJob     = "/api/v1/job"     // GET ?id=: one job
	PathCancel  = "/api/v1/cancel"  // POST ?id=: cancel a job
	PathRestore = "/api/v1/restore" // POST RestoreRequest: restore a group
	// PathEnrolToken: POST EnrolTokenRequest: a one-time enrolment token
	// for a node (answer EnrolToken).
	PathEnrolToken = "/api/v1/enrol-token"
)

// PathEnrol is the one route of the enrolment listener, where a new agent
// with no certificate yet trades a one-time token and a certificate
// request for its certificate (POST EnrolRequest, answer EnrolResponse).
const PathEnrol = "/enrol/v1/enrol"

// EnrolTokenRequest asks for a token that enrols one node, once.
type EnrolTokenRequest struct {
	Node string `json:"node"`
	// TTL is how long the token stays usable (a Go duration; empty: the
	// director's default).
	TTL string `json:"ttl,omitempty"`
}

// EnrolToken is a one-time token; the director keeps only its hash.
type EnrolToken struct {
	Node    string    `json:"node"`
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// EnrolRequest is an enrolling agent's: its node name, the token, and a
// PKCS #10 request (DER) for the key it made.
type EnrolRequest struct {
	Version int    `json:"version"`
	Node    string `json:"node"`
	Token   string `json:"token"`
	CSR     []byte `json:"csr"`
}

// EnrolResponse carries the agent's certificate and the CA's, as PEM.
type EnrolResponse struct {
	Certificate string    `json:"certificate"`
	NotAfter    time.Time `json:"not_after"`
}

// Unauthenticated routes, on the separate health listener.
const (
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// MaxBody bounds every request and response body.
const MaxBody = 1 << 20

// Poll is what an agent sends when it asks for work.
type Poll struct {
	Version int `json:"version"`
	// Plans are the plan names of the agent's configuration.
	Plans []string `json:"plans"`
	// Taken lists the IDs of the commands the agent has taken and whose
	// report the director has not acknowledged, once the director asked
	// for it (PollResponse.ListsTaken). A command delivered before this
	// poll and not listed was lost with the answer that carried it; the
	// director sends it again now. Absent (not asked for, or an agent that
	// does not list them): the director sends it again after a minute.
	Taken *[]string `json:"taken,omitempty"`
}

// Command kinds, in the order of a run.
const (
	KindPrepare = "prepare" // run pre hooks, take snapshots; stay frozen
	KindThaw    = "thaw"    // run post hooks
	KindUpload  = "upload"  // back up from what prepare took
	KindAbort   = "abort"   // thaw if frozen, drop what prepare took
	KindRestore = "restore" // restore snapshots of plans (restore hooks around)
)

// Command asks an agent to do one step of a job for some of its plans.
type Command struct {
	ID    string   `json:"id"`
	Job   string   `json:"job"`
	Kind  string   `json:"kind"`
	Plans []string `json:"plans"`
	// Tags are added to the snapshots of the upload (the group's).
	Tags []string `json:"tags,omitempty"`
	// Deadline: a prepared agent thaws by itself at this moment, or at
	// its own deadline if sooner, whatever happens to the director.
	Deadline time.Time `json:"deadline"`
	// Snapshots (restore) maps each plan to the snapshot to restore.
	Snapshots map[string]string `json:"snapshots,omitempty"`
	// Includes (restore) limits a paths plan's restore to these paths,
	// each within the plan's own paths.
	Includes []string `json:"includes,omitempty"`
}

// RestoreRequest restores (part of) a group: the snapshots a job of a
// plan committed, each through the agent of its node, or of the node Map
// names for it (another deployment's).
type RestoreRequest struct {
	Plan     string            `json:"plan"`
	Group    string            `json:"group"`
	Nodes    []string          `json:"nodes,omitempty"`
	Map      map[string]string `json:"map,omitempty"`
	Includes []string          `json:"includes,omitempty"`
}

// Report is the outcome of one command.
type Report struct {
	Command string `json:"command"`
	Job     string `json:"job"`
	Kind    string `json:"kind"`
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	// ThawBy (prepare) is when the agent thaws by itself at the latest:
	// the barrier must pass before the earliest of them.
	ThawBy time.Time `json:"thaw_by,omitzero"`
	// Snapshots maps each plan to the ID of its new snapshot (upload).
	Snapshots map[string]string `json:"snapshots,omitempty"`
}

// PollResponse carries the commands for an agent (none when the poll
// timed out).
type PollResponse struct {
	Commands []Command `json:"commands"`
	// ListsTaken asks the agent to list its taken commands in its polls
	// (Poll.Taken): an agent does so only after this, so that it can poll
	// a director that does not know the field.
	ListsTaken bool `json:"lists_taken,omitempty"`
}

// Plan describes a director plan for the CLI.
type Plan struct {
	Name     string              `json:"name"`
	Nodes    map[string][]string `json:"nodes"`
	Schedule string              `json:"schedule,omitempty"`
	RPO      string              `json:"rpo,omitempty"`
	// LastSuccess is when the plan last committed a group.
	LastSuccess *time.Time `json:"last_success,omitempty"`
	// Connected lists the plan's nodes whose agents are connected.
	Connected []string `json:"connected"`
}

// RunRequest starts a plan.
type RunRequest struct {
	Plan string `json:"plan"`
}

// Job states.
const (
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
	JobCanceled  = "canceled"
)

// Job is one run of a plan.
type Job struct {
	ID   string `json:"id"`
	Kind string `json:"kind,omitempty"` // "" (a backup) or "restore"
	// Group is the backup job a restore restores.
	Group    string    `json:"group,omitempty"`
	Plan     string    `json:"plan"`
	State    string    `json:"state"`
	Phase    string    `json:"phase"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	// Nodes: each node's outcome and snapshots.
	Nodes map[string]*NodeResult `json:"nodes"`
	// Followups: what ran after the commit (retention, copy) and how it
	// went; they never undo the commit.
	Followups map[string]string `json:"followups,omitempty"`
	// Forgotten: retention removed this group's snapshots.
	Forgotten bool `json:"forgotten,omitempty"`
}

// NodeResult is one node's part of a job.
type NodeResult struct {
	// Plans are the agent plans the node contributes to this job.
	Plans     []string          `json:"plans,omitempty"`
	Prepared  bool              `json:"prepared"`
	Thawed    bool              `json:"thawed"`
	Snapshots map[string]string `json:"snapshots,omitempty"`
	Error     string            `json:"error,omitempty"`
	// UploadCommand is the ID of the node's upload command: a restarted
	// director waits for its report instead of asking again.
	UploadCommand string `json:"upload_command,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}
