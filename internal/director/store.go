package director

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"bunker/internal/api"
)

// store keeps the job history and each plan's schedule state in a bbolt
// file: embedded, no server to run, every update one fsynced transaction.
type store struct {
	db *bolt.DB
}

var (
	bucketJobs  = []byte("jobs")  // job ID -> api.Job
	bucketPlans = []byte("plans") // plan name -> planState
	// bucketTokens: SHA-256 of an enrolment token (hex) -> tokenRecord.
	// The token itself is never stored.
	bucketTokens = []byte("tokens")
)

// tokenRecord is an unused enrolment token.
type tokenRecord struct {
	Node     string    `json:"node"`
	Expires  time.Time `json:"expires"`
	IssuedBy string    `json:"issued_by"`
}

// Why an enrolment token is refused.
var (
	errTokenInvalid = errors.New("enrolment token unknown, already used or expired")
	errTokenNode    = errors.New("enrolment token is for another node")
)

// planState is what the scheduler must remember across restarts.
type planState struct {
	// LastScheduled is the last cron time the plan was started for: a
	// restarted director never starts the same slot twice.
	LastScheduled time.Time `json:"last_scheduled"`
	LastSuccess   time.Time `json:"last_success"`
}

// ErrNoJob: no job of that ID.
var ErrNoJob = errors.New("no such job")

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("job store %s is in use by another director", path)
	}
	if err != nil {
		return nil, fmt.Errorf("job store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketJobs, bucketPlans, bucketTokens} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func (s *store) putJob(j *api.Job) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketJobs).Put([]byte(j.ID), data) })
}

func (s *store) job(id string) (*api.Job, error) {
	var j api.Job
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketJobs).Get([]byte(id))
		if data == nil {
			return ErrNoJob
		}
		return json.Unmarshal(data, &j)
	})
	return &j, err
}

// jobs returns the newest jobs first (IDs sort by start time), at most n.
func (s *store) jobs(n int) ([]*api.Job, error) {
	var out []*api.Job
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Last(); k != nil && len(out) < n; k, v = c.Prev() {
			var j api.Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job %s: %w", k, err)
			}
			out = append(out, &j)
		}
		return nil
	})
	return out, err
}

func (s *store) planState(name string) (planState, error) {
	var ps planState
	err := s.db.View(func(tx *bolt.Tx) error {
		if data := tx.Bucket(bucketPlans).Get([]byte(name)); data != nil {
			return json.Unmarshal(data, &ps)
		}
		return nil
	})
	return ps, err
}

func (s *store) updatePlan(name string, fn func(*planState)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPlans)
		var ps planState
		if data := b.Get([]byte(name)); data != nil {
			if err := json.Unmarshal(data, &ps); err != nil {
				return err
			}
		}
		fn(&ps)
		data, err := json.Marshal(ps)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), data)
	})
}

// putToken records a new token, and forgets the expired ones.
func (s *store) putToken(hash string, rec tokenRecord, now time.Time) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var r tokenRecord
			if json.Unmarshal(v, &r) != nil || now.After(r.Expires) {
				old = append(old, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return b.Put([]byte(hash), data)
	})
}

// token checks a token for node without using it up (take does).
func (s *store) token(hash, node string, now time.Time) error {
	return s.db.View(func(tx *bolt.Tx) error { return checkToken(tx, hash, node, now) })
}

// takeToken uses a token up: of two enrolments with one token, one wins.
func (s *store) takeToken(hash, node string, now time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := checkToken(tx, hash, node, now); err != nil {
			return err
		}
		return tx.Bucket(bucketTokens).Delete([]byte(hash))
	})
}

func checkToken(tx *bolt.Tx, hash, node string, now time.Time) error {
	data := tx.Bucket(bucketTokens).Get([]byte(hash))
	if data == nil {
		return errTokenInvalid
	}
	var r tokenRecord
	if err := json.Unmarshal(data, &r); err != nil || now.After(r.Expires) {
		return errTokenInvalid
	}
	if r.Node != node {
		return errTokenNode
	}
	return nil
}
