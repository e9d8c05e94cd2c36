package rest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/rest"
)

// TestLoadRefusesAnswersThatDoNotAddUp: a server (or something between)
// that answers a read with an empty body and no size, or ignores the range
// asked for, is an error, never data.
func TestLoadRefusesAnswersThatDoNotAddUp(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		length  int
		offset  int64
	}{
		{"empty success without a size", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }, 0, 0},
		{"size larger than the body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Bunker-Size", "10")
			w.Header().Set("Content-Length", "4")
			_, _ = w.Write([]byte("abcd"))
		}, 0, 0},
		{"range ignored", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Bunker-Size", "8")
			_, _ = w.Write([]byte("abcdefgh"))
		}, 4, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			u, _ := url.Parse(srv.URL + "/repo/")
			be, err := rest.NewForTest(rest.Config{URL: u, Retries: 1})
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			err = be.Load(context.Background(), backend.Handle{Type: backend.IndexFile, Name: "x"}, tc.length, tc.offset, func(rd io.Reader) error {
				var err error
				got, err = io.ReadAll(rd)
				return err
			})
			if err == nil {
				t.Fatalf("Load accepted the answer and read %q", got)
			}
			if tc.name != "range ignored" && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("error %v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
}

// FuzzParseURL: a rest: URL is accepted only as http(s)://[user@]host/name
// with one plain path component and no password.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"rest:https://u@host:8000/repo", "rest:http://host/repo/", "rest:https://u:pw@host/r", "rest:https://host/a/b",
		"rest:https://host/..", "rest:https://host/%2e%2e", "rest:https://host/%2F", "rest:ftp://host/r", "https://host/r", "rest:https://host"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := rest.ParseURL(s)
		if err != nil {
			return
		}
		u := cfg.URL
		name := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
		if (u.Scheme != "https" && u.Scheme != "http") || u.User != nil || cfg.Password != "" ||
			u.Path != "/"+name+"/" || name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
			t.Fatalf("ParseURL(%q) = %+v (path %q)", s, cfg, u.Path)
		}
	})
}

// FuzzList: a listing is the server's word, one JSON object per line; any
// answer is either files with names that can name a file, or an error.
func FuzzList(f *testing.F) {
	f.Add([]byte(`{"name":"0123abcd","size":10,"mtime":1}` + "\n" + `{"name":"ffee","size":0,"mtime":0}` + "\n"))
	f.Add([]byte(`{"name":"../x","size":1}` + "\n"))
	f.Add([]byte(`{"name":"","size":-1}` + "\n"))
	f.Add([]byte(`{"error":"disk on fire"}` + "\n"))
	f.Add([]byte("not json\n"))
	f.Add([]byte(strings.Repeat("x", 2<<20)))
	var body atomic.Pointer[[]byte]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(*body.Load())
	}))
	f.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL + "/repo/")
	be, err := rest.NewForTest(rest.Config{URL: u, Retries: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		body.Store(&data)
		err := be.List(context.Background(), backend.IndexFile, func(fi backend.FileInfo) error {
			if herr := backend.CheckHandle(backend.Handle{Type: backend.IndexFile, Name: fi.Name}); herr != nil {
				t.Fatalf("List passed on a name that cannot name a file: %v", herr)
			}
			return nil
		})
		_ = err
	})
}
