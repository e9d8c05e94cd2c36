package policy

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseDuration(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Duration
		str  string // String() of the result
		err  string // substring of the error; "" for success
	}{
		{in: "1y2m3d4h", want: Duration{1, 2, 3, 4}, str: "1y2m3d4h"},
		{in: "7d", want: Duration{Days: 7}, str: "7d"},
		{in: "36h", want: Duration{Hours: 36}, str: "36h"},
		{in: "2y", want: Duration{Years: 2}, str: "2y"},
		{in: "1m", want: Duration{Months: 1}, str: "1m"},
		{in: "1y4h", want: Duration{Years: 1, Hours: 4}, str: "1y4h"},
		{in: "0y7d", want: Duration{Days: 7}, str: "7d"},
		{in: "007d", want: Duration{Days: 7}, str: "7d"},
		{in: "100000y100000m100000d100000h", want: Duration{100000, 100000, 100000, 100000}, str: "100000y100000m100000d100000h"},

		{in: "", err: "empty"},
		{in: "7", err: "missing unit"},
		{in: "d", err: "expected a number"},
		{in: "7d3", err: "missing unit"},
		{in: "7w", err: `unknown unit "w"`},
		{in: "7D", err: `unknown unit "D"`},
		{in: "7dé", err: `expected a number at "é"`},
		{in: "7é", err: `unknown unit "é"`},
		{in: "1.5d", err: `unknown unit "."`},
		{in: "-1d", err: "negative"},
		{in: "1d-1h", err: "negative"},
		{in: "+1d", err: "expected a number"},
		{in: " 1d", err: "expected a number"},
		{in: "1d ", err: "expected a number"},
		{in: "1 d", err: `unknown unit " "`},
		{in: "0d", err: "zero"},
		{in: "0y0m0d0h", err: "zero"},
		{in: "100001d", err: "100001 is too large"},
		{in: "99999999999999999999999999h", err: "too large"},
		{in: "1d1d", err: `unit "d" given twice`},
		{in: "0d1d", err: `unit "d" given twice`},
		{in: "1d1y", err: "order"},
		{in: "1h1m", err: "order"},
	} {
		got, err := ParseDuration(c.in)
		if c.err != "" {
			if err == nil {
				t.Errorf("ParseDuration(%q) = %v, want error with %q", c.in, got, c.err)
				continue
			}
			msg := err.Error()
			if !strings.Contains(msg, c.err) || !strings.Contains(msg, strconv.Quote(c.in)) || strings.Contains(msg, "\n") {
				t.Errorf("ParseDuration(%q) error %q: want one line naming the input and saying %q", c.in, msg, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseDuration(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if s := got.String(); s != c.str {
			t.Errorf("%+v.String() = %q, want %q", got, s, c.str)
		}
	}
}

func TestDurationStringAndIsZero(t *testing.T) {
	if s := (Duration{}).String(); s != "0h" {
		t.Errorf("zero String() = %q", s)
	}
	if !(Duration{}).IsZero() || (Duration{Hours: 1}).IsZero() || (Duration{Years: -1}).IsZero() {
		t.Error("IsZero wrong")
	}
	if s := (Duration{Years: 1, Days: 2}).String(); s != "1y2d" {
		t.Errorf("String() = %q", s)
	}
}

func TestParseTagSet(t *testing.T) {
	for _, c := range []struct {
		in   string
		want TagSet
		err  bool
	}{
		{in: "a", want: TagSet{"a"}},
		{in: "a,b", want: TagSet{"a", "b"}},
		{in: "b,a,b", want: TagSet{"b", "a", "b"}},
		{in: "with space", want: TagSet{"with space"}},
		{in: "", err: true},
		{in: ",", err: true},
		{in: "a,", err: true},
		{in: ",a", err: true},
		{in: "a,,b", err: true},
	} {
		got, err := ParseTagSet(c.in)
		if c.err {
			if err == nil {
				t.Errorf("ParseTagSet(%q) = %q, want an error", c.in, got)
			} else if !strings.Contains(err.Error(), strconv.Quote(c.in)) {
				t.Errorf("ParseTagSet(%q) error %q does not name the input", c.in, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseTagSet(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
		if got.String() != c.in {
			t.Errorf("TagSet.String() = %q, want %q", got.String(), c.in)
		}
	}
}

func TestTagSetMatch(t *testing.T) {
	for _, c := range []struct {
		set  TagSet
		tags []string
		want bool
	}{
		{TagSet{"a"}, []string{"a"}, true},
		{TagSet{"a"}, []string{"b", "a"}, true},
		{TagSet{"a", "b"}, []string{"b", "c", "a"}, true},
		{TagSet{"a", "b"}, []string{"a"}, false},
		{TagSet{"a"}, nil, false},
		{TagSet{"A"}, []string{"a"}, false},
		{TagSet{}, nil, true},
	} {
		if got := c.set.Match(c.tags); got != c.want {
			t.Errorf("%q.Match(%q) = %v", c.set, c.tags, got)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		p    Policy
		err  string // exact message; "" for valid
	}{
		{"last", Policy{Last: 1}, ""},
		{"tags only", Policy{Tags: []TagSet{{"a"}}}, ""},
		{"within only", Policy{Within: Duration{Hours: 1}}, ""},
		{"all", Policy{1, 2, 3, 4, 5, 6, Duration{1, 0, 0, 0}, []TagSet{{"a", "b"}}}, ""},
		{"zero counts with a rule", Policy{Daily: 0, Weekly: 3}, ""},
		{"empty", Policy{}, "no keep rule given: this policy would remove every snapshot"},
		{"empty tag list", Policy{Tags: []TagSet{}}, "no keep rule given: this policy would remove every snapshot"},
		{"negative last", Policy{Last: -1}, "--keep-last must be at least 1, got -1"},
		{"negative hourly", Policy{Hourly: -2, Daily: 5}, "--keep-hourly must be at least 1, got -2"},
		{"negative daily", Policy{Daily: -3}, "--keep-daily must be at least 1, got -3"},
		{"negative weekly", Policy{Last: 1, Weekly: -4}, "--keep-weekly must be at least 1, got -4"},
		{"negative monthly", Policy{Monthly: -5}, "--keep-monthly must be at least 1, got -5"},
		{"negative yearly", Policy{Yearly: -6}, "--keep-yearly must be at least 1, got -6"},
		{"first negative reported", Policy{Daily: -1, Yearly: -1}, "--keep-daily must be at least 1, got -1"},
		{"negative within", Policy{Within: Duration{Days: -1}}, "--keep-within must not be negative, got 0y0m-1d0h"},
		{"huge within", Policy{Within: Duration{Years: 100001}}, "--keep-within 100001y is too large (at most 100000 per unit)"},
		{"empty tag set", Policy{Tags: []TagSet{{}}}, "--keep-tag needs at least one tag, got an empty list"},
		{"empty tag", Policy{Tags: []TagSet{{"a", ""}}}, `--keep-tag "a,": empty tag`},
	} {
		err := c.p.Validate()
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: unexpected error %v", c.name, err)
		case c.err != "" && (err == nil || err.Error() != c.err):
			t.Errorf("%s: error %v, want %q", c.name, err, c.err)
		}
	}
	if err := (Policy{}).Validate(); !errors.Is(err, ErrEmptyPolicy) {
		t.Errorf("empty policy error %v does not wrap ErrEmptyPolicy", err)
	}
	if err := (Policy{Daily: -1}).Validate(); errors.Is(err, ErrEmptyPolicy) {
		t.Errorf("negative count error %v wraps ErrEmptyPolicy", err)
	}
}

func TestPolicyString(t *testing.T) {
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{Last: 2, Daily: 7, Weekly: 4, Within: Duration{Years: 1}, Tags: []TagSet{{"important"}}},
			"keep 2 last, 7 daily, 4 weekly, within 1y, tagged [important]"},
		{Policy{Hourly: 24, Monthly: 12, Yearly: 10}, "keep 24 hourly, 12 monthly, 10 yearly"},
		{Policy{Tags: []TagSet{{"a", "b"}, {"c"}}}, "keep tagged [a,b] or [c]"},
		{Policy{Within: Duration{1, 2, 0, 4}}, "keep within 1y2m4h"},
		{Policy{}, "keep nothing"},
	} {
		if got := c.p.String(); got != c.want {
			t.Errorf("String() = %q, want %q", got, c.want)
		}
	}
}
