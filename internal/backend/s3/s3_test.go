package s3_test

import (
	"strings"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/backendtest"
	"bunker/internal/backend/s3"
	"bunker/internal/backend/s3/s3test"
)

// TestConformance runs the backend conformance suite against a real
// S3-compatible server (versitygw).
func TestConformance(t *testing.T) {
	srv := s3test.Start(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend { return srv.NewBackend(t) })
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    s3.Config
		wantErr bool
	}{
		{in: "s3:https://s3.example.com/bucket/some/prefix", want: s3.Config{Endpoint: "s3.example.com", Bucket: "bucket", Prefix: "some/prefix"}},
		{in: "s3:http://127.0.0.1:9000/b", want: s3.Config{Endpoint: "127.0.0.1:9000", Insecure: true, Bucket: "b"}},
		{in: "s3:s3.example.com:443/b/p/", want: s3.Config{Endpoint: "s3.example.com:443", Bucket: "b", Prefix: "p"}},
		{in: "s3:https://host/", wantErr: true},
		{in: "s3:ftp://host/b", wantErr: true},
		{in: "s3:https://key:secret@host/b", wantErr: true},
		{in: "https://host/b", wantErr: true},
	} {
		got, err := s3.ParseURL(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseURL(%q) error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// FuzzParseURL: an s3: URL is accepted only with a host and a bucket, no
// credentials, and a prefix without leading or trailing slashes.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3:https://s3.example.com/bucket/some/prefix", "s3:http://127.0.0.1:9000/b", "s3:host/b/p/", "s3:https://host/",
		"s3:https://k:s@host/b", "s3:ftp://host/b", "s3:https:///b", "s3://b", "s3:host//b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := s3.ParseURL(s)
		if err != nil {
			return
		}
		if cfg.Endpoint == "" || cfg.Bucket == "" || strings.Contains(cfg.Bucket, "/") ||
			strings.HasPrefix(cfg.Prefix, "/") || strings.HasSuffix(cfg.Prefix, "/") ||
			strings.Contains(cfg.Endpoint, "@") {
			t.Fatalf("ParseURL(%q) = %+v", s, cfg)
		}
	})
}
