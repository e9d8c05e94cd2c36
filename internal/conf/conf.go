// Package conf loads Bunker's YAML configuration files (the director's and
// the agents') strictly: an unknown field, a value of the wrong type or a
// duplicate key is an error, and every error names the file and the line,
// so that `bunker config validate` can point at each mistake.
//
// A file is decoded twice: once into the caller's struct (with unknown
// fields refused), once into a node tree kept in Doc, which the caller's
// semantic checks use to find the line of a key (Doc.Errorf).
package conf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxSize bounds a configuration file.
const MaxSize = 1 << 20

// Doc is a loaded file: its name and node tree.
type Doc struct {
	File string
	root *yaml.Node
}

// Errors collects the problems of one file, each "file:line: message".
type Errors []string

func (e Errors) Error() string {
	if len(e) == 1 {
		return e[0]
	}
	return fmt.Sprintf("%s (and %d more problems)", e[0], len(e)-1)
}

// Load reads and strictly decodes the file into v.
func Load(path string, v any) (*Doc, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxSize)
	}
	return Parse(path, data, v)
}

// LoadChecked loads a file into a new T and runs check on it; the error
// lists every problem with its line.
func LoadChecked[T any](path string, check func(*T, *Doc) Errors) (*T, error) {
	v := new(T)
	doc, err := Load(path, v)
	if err != nil {
		return nil, err
	}
	if errs := check(v, doc); len(errs) > 0 {
		return nil, errs
	}
	return v, nil
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// Parse strictly decodes data (named file in errors) into v.
func Parse(file string, data []byte, v any) (*Doc, error) {
	d := &Doc{File: file, root: &yaml.Node{}}
	if err := yaml.Unmarshal(data, d.root); err != nil {
		return nil, d.wrap(err)
	}
	if len(d.root.Content) == 0 {
		return nil, Errors{file + ": the file is empty"}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return nil, d.wrap(err)
	}
	return d, nil
}

// wrap turns a yaml error into Errors with the file name.
func (d *Doc) wrap(err error) error {
	var te *yaml.TypeError
	var msgs []string
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	out := make(Errors, 0, len(msgs))
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if sm := lineRE.FindStringSubmatch(m); sm != nil {
			m = d.File + ":" + sm[1] + ": " + m[len(sm[0]):]
		} else {
			m = d.File + ": " + m
		}
		// "field x not found in type director.Plan": the type is ours, not
		// the user's.
		if i := strings.Index(m, " in type "); i > 0 && strings.Contains(m, "not found") {
			m = m[:i] + " (unknown field)"
		}
		out = append(out, m)
	}
	return out
}

// Line returns the line of the value at path (mapping keys from the top),
// or of its deepest existing ancestor.
func (d *Doc) Line(path ...string) int {
	n := d.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			break
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
				line = n.Content[i].Line
				break
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}

// Errorf formats a problem at the line of path.
func (d *Doc) Errorf(path []string, format string, args ...any) string {
	return fmt.Sprintf("%s:%d: %s: %s", d.File, d.Line(path...), strings.Join(path, "."), fmt.Sprintf(format, args...))
}

// Duration is a time.Duration written as "30s", "5m", "24h".
type Duration time.Duration

// UnmarshalYAML parses a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration (like 30s, 5m, 24h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the duration, or def when unset.
func (d Duration) D(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// credentialNames are what a repository's credentials file may set.
var credentialNames = map[string]bool{"AWS_ACCESS_KEY_ID": true, "AWS_SECRET_ACCESS_KEY": true, "AWS_SESSION_TOKEN": true, "BUNKER_REST_PASSWORD": true}

// ErrCredentials wraps every problem of a credentials file; its message
// never quotes a value.
var ErrCredentials = errors.New("bad credentials file")

// ReadCredentials reads a credentials file: NAME=value lines ("export "
// allowed, quotes trimmed, # comments), NAME one of AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, BUNKER_REST_PASSWORD.
func ReadCredentials(file string) (map[string]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	out := map[string]string{}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(strings.TrimPrefix(k, "export "))
		if !ok || !credentialNames[k] {
			return nil, fmt.Errorf("%w: %s line %d: want NAME=value with NAME one of AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, BUNKER_REST_PASSWORD", ErrCredentials, file, n+1)
		}
		out[k] = strings.Trim(strings.TrimSpace(v), `"'`)
	}
	if out["AWS_ACCESS_KEY_ID"] != "" && out["AWS_SECRET_ACCESS_KEY"] == "" {
		return nil, fmt.Errorf("%w: %s: AWS_ACCESS_KEY_ID without AWS_SECRET_ACCESS_KEY", ErrCredentials, file)
	}
	return out, nil
}

// RepositoryEnv is the environment of a bunker child process working on a
// repository: the process environment without any BUNKER_ (but BUNKER_TEST_
// knobs) or AWS_ variable, then the repository's location, password file
// and CA, and the credentials of its credentials file. Secrets stay in the
// environment, never in arguments.
func RepositoryEnv(location, passwordFile, caCert, credentialsFile string) ([]string, error) {
	var env []string
	for _, kv := range os.Environ() {
		if (!strings.HasPrefix(kv, "BUNKER_") || strings.HasPrefix(kv, "BUNKER_TEST_")) && !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "BUNKER_REPOSITORY="+location, "BUNKER_PASSWORD_FILE="+passwordFile)
	if caCert != "" {
		env = append(env, "BUNKER_CACERT="+caCert)
	}
	if credentialsFile == "" {
		return env, nil
	}
	creds, err := ReadCredentials(credentialsFile)
	if err != nil {
		return nil, err
	}
	for k, v := range creds {
		env = append(env, k+"="+v)
	}
	return env, nil
}
