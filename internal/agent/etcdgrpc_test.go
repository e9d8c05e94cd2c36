package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"

	"bunker/internal/pki"
)

// grpcFrame encodes one gRPC message: flag, big-endian length, message.
func grpcFrame(flag byte, msg []byte) []byte {
	b := []byte{flag, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// snapshotMsg encodes a SnapshotResponse: a header (field 1), the bytes
// remaining (2), the blob (3) and the version (4).
func snapshotMsg(blob string) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte{0x08, 0x01}) // header {cluster_id: 1}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, 12345)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte(blob))
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	return protowire.AppendString(b, "3.7.0")
}

// readSnapshot reads a Maintenance.Snapshot body whose gRPC status (in the
// trailers) is status ("" for none).
func readSnapshot(body []byte, status string) (string, error) {
	trailer := http.Header{}
	if status != "" {
		trailer.Set("Grpc-Status", status)
		trailer.Set("Grpc-Message", url.PathEscape("the member said no"))
	}
	r := &snapshotReader{body: io.NopCloser(nil), r: bufio.NewReader(bytes.NewReader(body)), close: func() {}, status: func() http.Header { return trailer }}
	out, err := io.ReadAll(r)
	return string(out), err
}

func TestSnapshotReader(t *testing.T) {
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name, status string
		body         []byte
		want, err    string
	}{
		{name: "two messages", status: "0", body: join(grpcFrame(0, snapshotMsg("hello, ")), grpcFrame(0, snapshotMsg("world"))), want: "hello, world"},
		{name: "empty blob skipped", status: "0", body: join(grpcFrame(0, nil), grpcFrame(0, snapshotMsg("x"))), want: "x"},
		{name: "no messages", status: "0", want: ""},
		{name: "error status", status: "5", body: grpcFrame(0, snapshotMsg("part")), want: "part", err: "gRPC status 5: the member said no"},
		{name: "no status", body: grpcFrame(0, snapshotMsg("part")), want: "part", err: "without a status"},
		{name: "truncated header", status: "0", body: grpcFrame(0, snapshotMsg("abc"))[:3], err: io.ErrUnexpectedEOF.Error()},
		{name: "truncated message", status: "0", body: grpcFrame(0, snapshotMsg("abc"))[:9], err: io.ErrUnexpectedEOF.Error()},
		{name: "compressed", status: "0", body: grpcFrame(1, snapshotMsg("abc")), err: "compressed"},
		{name: "too large", status: "0", body: []byte{0, 0xff, 0xff, 0xff, 0xff}, err: "over"},
		{name: "bad protobuf", status: "0", body: grpcFrame(0, []byte{0x1a, 0x10, 'a'}), err: "bad snapshot message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSnapshot(tc.body, tc.status)
			if got != tc.want || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %q, %v; want %q, error %q", got, err, tc.want, tc.err)
			}
		})
	}
}

// FuzzSnapshotReader: any bytes as a Maintenance.Snapshot answer are read
// to an end or an error, never a panic or a hang.
func FuzzSnapshotReader(f *testing.F) {
	f.Add(append(grpcFrame(0, snapshotMsg("abc")), grpcFrame(0, snapshotMsg("def"))...))
	f.Add(grpcFrame(0, []byte{0x1a, 0x10, 'a'}))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = readSnapshot(body, "0")
	})
}

func TestEtcdBaseURL(t *testing.T) {
	for _, tc := range []struct {
		in      string
		tls     bool
		want    string
		secure  bool
		invalid bool
	}{
		{in: "127.0.0.1:2379", want: "http://127.0.0.1:2379"},
		{in: "127.0.0.1:2379", tls: true, want: "https://127.0.0.1:2379", secure: true},
		{in: "https://etcd-1:2379", want: "https://etcd-1:2379", secure: true},
		{in: "http://etcd-1:2379/", want: "http://etcd-1:2379"},
		{in: "http://etcd-1:2379/v3", invalid: true},
		{in: "http://etcd-1:2379", tls: true, invalid: true},
		{in: "unix:///run/etcd.sock", invalid: true},
		{in: "http://", invalid: true},
	} {
		got, secure, err := etcdBaseURL(tc.in, tc.tls)
		if tc.invalid != (err != nil) || got != tc.want || secure != tc.secure {
			t.Errorf("%q (tls %v): %q, %v, %v", tc.in, tc.tls, got, secure, err)
		}
	}
}

// The snapshot over TLS with a client certificate, from a real etcd member
// that requires one: it arrives whole (its SHA-256 checks), and without the
// certificate the member refuses it.
func TestEtcdSnapshotTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.Init(dir, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.IssueFiles(dir, pki.Request{Role: pki.RoleDirector, Name: "etcd", Hosts: []string{"127.0.0.1"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cliCert, cliKey, err := ca.IssueFiles(dir, pki.Request{Role: pki.RoleAgent, Name: "node1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, pki.CACertFile)
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir, cfg.LogLevel = "m1", filepath.Join(dir, "etcd"), "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Port 0: the member listens where the kernel says (e.Clients).
	client, _ := url.Parse("https://127.0.0.1:0")
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = "m1=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: caFile, ClientCertAuth: true}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd did not start")
	}
	endpoint := "https://" + e.Clients[0].Addr().String()
	ctx := context.Background()
	dst := filepath.Join(dir, "snap")
	n, err := etcdSnapshot(ctx, &Etcd{Endpoints: []string{endpoint}, CACert: caFile, Cert: cliCert, Key: cliKey}, dst)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dst); err != nil || st.Size() != n || n < 4096 {
		t.Errorf("snapshot of %d bytes, file %v %v", n, st, err)
	}
	_, err = etcdSnapshot(ctx, &Etcd{Endpoints: []string{endpoint}, CACert: caFile}, filepath.Join(dir, "snap2"))
	if err == nil {
		t.Error("a snapshot without a client certificate was taken")
	}
}

// An etcd restore on a node without etcdutl says what is missing and where
// to set it, in one line.
func TestEtcdRestoreWithoutEtcdutl(t *testing.T) {
	err := etcdRestore(context.Background(), &EtcdRestore{Name: "m1", DataDir: t.TempDir() + "/m1", PeerURLs: []string{"http://127.0.0.1:2380"},
		InitialCluster: "m1=http://127.0.0.1:2380", Etcdutl: filepath.Join(t.TempDir(), "etcdutl")}, "/nonexistent/etcd.snapshot")
	if err == nil || !strings.Contains(err.Error(), "etcd.restore.etcdutl") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %v", err)
	}
}
