package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// The agent needs one call of etcd's v3 API: Maintenance.Snapshot, which
// streams the database. It is made here as plain gRPC over net/http's own
// HTTP/2 (gRPC is HTTP/2 with length-prefixed protobuf messages and the
// status in trailers) rather than through etcd's client library. That
// library, with gRPC and what it pulls in, was 40% of the bunker binary's
// code, and its package initialisation cost every bunker command 7 MB of
// memory and 10 ms at start.

// snapshotMethod is the gRPC path of etcd's Maintenance.Snapshot.
const snapshotMethod = "/etcdserverpb.Maintenance/Snapshot"

// maxGRPCMessage bounds one message of the stream; etcd sends the database
// in 32 KiB pieces.
const maxGRPCMessage = 16 << 20

// etcdDialTimeout bounds the connection to one endpoint.
const etcdDialTimeout = 5 * time.Second

// etcdSnapshotStream opens Maintenance.Snapshot on endpoint ("host:port",
// "http://host:port" or "https://host:port"; TLS when tlsCfg is set or the
// scheme is https) and returns the database's bytes as they come. The
// stream's end is checked against the gRPC status: a read returns io.EOF
// only after a status OK.
func etcdSnapshotStream(ctx context.Context, endpoint string, tlsCfg *tls.Config) (io.ReadCloser, error) {
	base, secure, err := etcdBaseURL(endpoint, tlsCfg != nil)
	if err != nil {
		return nil, err
	}
	protocols := new(http.Protocols)
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: etcdDialTimeout}).DialContext,
		ForceAttemptHTTP2: true,
		Protocols:         protocols,
	}
	if secure {
		protocols.SetHTTP2(true)
		if tlsCfg == nil {
			tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig = tlsCfg.Clone()
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	// The request is one message, uncompressed and empty (SnapshotRequest
	// has no fields).
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+snapshotMethod, bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	fail := func(err error) (io.ReadCloser, error) {
		resp.Body.Close()
		tr.CloseIdleConnections()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("etcd answered HTTP %s", resp.Status))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc") {
		return fail(fmt.Errorf("not a gRPC answer (content type %q)", ct))
	}
	// An error at once comes as headers only.
	if err := grpcStatus(resp.Header); err != nil {
		return fail(err)
	}
	return &snapshotReader{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 64<<10), close: tr.CloseIdleConnections,
		status: func() http.Header {
			if resp.Header.Get("Grpc-Status") != "" {
				return resp.Header // a trailers-only answer
			}
			return resp.Trailer
		}}, nil
}

// etcdBaseURL makes endpoint a URL without a path; secure tells TLS. An
// http:// endpoint with certificates set is refused: the certificates
// would not be used.
func etcdBaseURL(endpoint string, withTLS bool) (string, bool, error) {
	if !strings.Contains(endpoint, "://") {
		scheme := "http"
		if withTLS {
			scheme = "https"
		}
		endpoint = scheme + "://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
		return "", false, fmt.Errorf("etcd endpoint %q: want host:port or http(s)://host:port", endpoint)
	}
	if withTLS && u.Scheme == "http" {
		return "", false, fmt.Errorf("etcd endpoint %q is http:// but certificates are set: use https://", endpoint)
	}
	return u.Scheme + "://" + u.Host, u.Scheme == "https", nil
}

// grpcStatus returns the error a gRPC status in h carries (nil for OK or
// none).
func grpcStatus(h http.Header) error {
	s := h.Get("Grpc-Status")
	if s == "" || s == "0" {
		return nil
	}
	msg, err := url.PathUnescape(h.Get("Grpc-Message"))
	if err != nil {
		msg = h.Get("Grpc-Message")
	}
	return fmt.Errorf("etcd: gRPC status %s: %s", s, msg)
}

// snapshotReader reads the blobs of a stream of SnapshotResponse messages.
type snapshotReader struct {
	body io.Closer
	r    *bufio.Reader
	// status returns the headers that hold the gRPC status, once the
	// body has been read to its end.
	status func() http.Header
	close  func()
	msg    []byte // the message being read
	blob   []byte // what is left of its blob, within msg
	err    error  // sticky
}

func (s *snapshotReader) Read(p []byte) (int, error) {
	for len(s.blob) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		s.blob, s.err = s.next()
	}
	n := copy(p, s.blob)
	s.blob = s.blob[n:]
	return n, nil
}

// next reads the next message and returns its blob. At the end of the
// stream it returns io.EOF if the trailers say OK.
func (s *snapshotReader) next() ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(s.r, hdr[:1]); err != nil {
		if err == io.EOF {
			h := s.status()
			if h.Get("Grpc-Status") == "" {
				return nil, errors.New("etcd: the snapshot stream ended without a status")
			}
			if st := grpcStatus(h); st != nil {
				return nil, st
			}
		}
		return nil, err
	}
	if _, err := io.ReadFull(s.r, hdr[1:]); err != nil {
		return nil, unexpected(err)
	}
	if hdr[0] != 0 {
		return nil, errors.New("etcd: a compressed gRPC message (none was asked for)")
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxGRPCMessage {
		return nil, fmt.Errorf("etcd: a gRPC message of %d bytes, over %d", n, maxGRPCMessage)
	}
	if cap(s.msg) < int(n) {
		s.msg = make([]byte, n)
	}
	s.msg = s.msg[:n]
	if _, err := io.ReadFull(s.r, s.msg); err != nil {
		return nil, unexpected(err)
	}
	return snapshotBlob(s.msg)
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// snapshotBlob returns the blob field (3) of a SnapshotResponse message
// (header 1, remaining_bytes 2, blob 3, version 4), skipping the others.
func snapshotBlob(msg []byte) ([]byte, error) {
	var blob []byte
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, fmt.Errorf("etcd: bad snapshot message: %w", protowire.ParseError(n))
		}
		msg = msg[n:]
		if num == 3 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(msg)
			if n < 0 {
				return nil, fmt.Errorf("etcd: bad snapshot message: %w", protowire.ParseError(n))
			}
			blob = v // a singular field: the last one counts
			msg = msg[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return nil, fmt.Errorf("etcd: bad snapshot message: %w", protowire.ParseError(n))
		}
		msg = msg[n:]
	}
	return blob, nil
}

func (s *snapshotReader) Close() error {
	err := s.body.Close()
	s.close()
	return err
}
