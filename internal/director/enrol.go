package director

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"bunker/internal/api"
	"bunker/internal/pki"
)

// Enrolment: an operator asks the director for a one-time token for a node
// of the configuration (PathEnrolToken, operator role); the new agent makes
// its key, and trades the token and a certificate request for a
// certificate on the enrolment listener (PathEnrol, no client
// certificate). The certificate always names the token's node and carries
// the agent role, whatever the request asks; the director keeps only the
// token's hash, and a token works once.

// tokenPrefix marks Bunker enrolment tokens (for secret scanners and for
// a clear error when something else is pasted).
const tokenPrefix = "bunker-enrol-"

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func (d *Director) handleEnrolToken(w http.ResponseWriter, r *http.Request) {
	var req api.EnrolTokenRequest
	if !decode(w, r, &req) {
		return
	}
	if d.ca == nil {
		writeErr(w, http.StatusConflict, "enrolment is off: give the director an enrol section (listen, ca_key)")
		return
	}
	if _, ok := d.cfg.Nodes[req.Node]; !ok {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("unknown node %q (add it to the director's nodes first)", req.Node))
		return
	}
	ttl := time.Duration(d.cfg.Enrol.TokenTTL)
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if req.TTL != "" {
		var err error
		ttl, err = time.ParseDuration(req.TTL)
		if err != nil || ttl < time.Second || ttl > MaxTokenTTL {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("ttl %q: want a duration between 1s and 168h", req.TTL))
			return
		}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	op, _ := pki.PeerIdentity(r)
	now := time.Now()
	rec := tokenRecord{Node: req.Node, Expires: now.Add(ttl), IssuedBy: op.Name}
	if err := d.st.putToken(hashToken(tok), rec, now); err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	d.log.Info("enrolment token issued", "node", req.Node, "expires", rec.Expires.Format(time.RFC3339), "operator", op.Name)
	writeJSON(w, api.EnrolToken{Node: req.Node, Token: tok, Expires: rec.Expires})
}

// EnrolHandler serves the enrolment listener.
func (d *Director) EnrolHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(api.PathEnrol, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			writeErr(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, api.MaxBody)
		d.handleEnrol(w, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such route (this is the enrolment listener)")
	})
	return mux
}

func (d *Director) handleEnrol(w http.ResponseWriter, r *http.Request) {
	var req api.EnrolRequest
	if !decode(w, r, &req) {
		return
	}
	refuse := func(code int, why string) {
		d.log.Warn("enrolment refused", "node", req.Node, "from", r.RemoteAddr, "reason", why)
		writeErr(w, code, why)
	}
	switch {
	case d.ca == nil:
		refuse(http.StatusConflict, "enrolment is off")
		return
	case req.Version != api.Version:
		refuse(http.StatusBadRequest, fmt.Sprintf("protocol version %d, the director speaks %d", req.Version, api.Version))
		return
	case !strings.HasPrefix(req.Token, tokenPrefix):
		refuse(http.StatusForbidden, "not an enrolment token (they start with "+tokenPrefix+")")
		return
	}
	hash, now := hashToken(req.Token), time.Now()
	if err := d.st.token(hash, req.Node, now); err != nil {
		code := http.StatusForbidden
		if !errors.Is(err, errTokenInvalid) && !errors.Is(err, errTokenNode) {
			code = http.StatusInternalServerError
		}
		refuse(code, err.Error())
		return
	}
	if _, ok := d.cfg.Nodes[req.Node]; !ok {
		refuse(http.StatusForbidden, fmt.Sprintf("node %q is no longer in the director's configuration", req.Node))
		return
	}
	der, err := d.ca.SignRequest(req.CSR, pki.Request{Role: pki.RoleAgent, Name: req.Node}, now)
	if err != nil {
		refuse(http.StatusBadRequest, err.Error())
		return
	}
	// Signing came first so that a bad request does not burn the token;
	// of two enrolments racing with one token, only one gets here.
	if err := d.st.takeToken(hash, req.Node, now); err != nil {
		refuse(http.StatusForbidden, err.Error())
		return
	}
	cert, err := pki.ParseCert(d.ca.Chain(der))
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	d.log.Info("agent enrolled", "node", req.Node, "serial", cert.SerialNumber.String(), "from", r.RemoteAddr, "not_after", cert.NotAfter.Format(time.RFC3339))
	writeJSON(w, api.EnrolResponse{Certificate: string(d.ca.Chain(der)), NotAfter: cert.NotAfter})
}

// ServeEnrol runs the enrolment listener on ln until ctx ends.
func (d *Director) ServeEnrol(ctx context.Context, ln net.Listener) error {
	tlsCfg, err := pki.EnrolServerTLS(d.cfg.TLS.Cert, d.cfg.TLS.Key)
	if err != nil {
		return err
	}
	return d.serveTLS(ctx, ln, d.EnrolHandler(), tlsCfg, 16<<10)
}
