package rest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
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
