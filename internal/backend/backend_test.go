package backend_test

import (
	"strings"
	"testing"

	"bunker/internal/backend"
	"bunker/internal/backend/rest"
	"bunker/internal/backend/s3"
)

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://host/x", "https://host/x"},
		{"https://user@host/x", "https://user@host/x"},
		{"https://user:secret@host/x", "https://user:xxxxx@host/x"},
		{"ftp://u:p@ss@h/x?y=z@w", "ftp://u:xxxxx@h/x?y=z@w"},
		{"https://u:pw@host", "https://u:xxxxx@host"},
		{"host/x", "host/x"},
	} {
		if got := backend.RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestURLErrorsHideSecrets: a repository URL refused for whatever reason
// (a password in it, a bad escape, a wrong scheme) is not printed with the
// password.
func TestURLErrorsHideSecrets(t *testing.T) {
	for _, in := range []string{
		"rest:https://u:SECRETPW@host/r", "rest:ftp://u:SECRETPW@host/r", "rest:https://u:SECRETPW@host/%zz",
		"rest:https://u:SECRETPW@host/a/b", "s3:https://k:SECRETPW@host/b", "s3:ftp://k:SECRETPW@host/b",
		"s3:https://k:SECRETPW@host/%zz", "s3:k:SECRETPW@host/%zz", "s3:https://k:SECRETPW@host/",
	} {
		var err error
		if strings.HasPrefix(in, "rest:") {
			_, err = rest.ParseURL(in)
		} else {
			_, err = s3.ParseURL(in)
		}
		if err == nil {
			t.Errorf("%q accepted", in)
		} else if strings.Contains(err.Error(), "SECRETPW") {
			t.Errorf("%q: the error shows the password: %v", in, err)
		}
	}
}
