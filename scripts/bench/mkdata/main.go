// Command mkdata builds the deterministic benchmark dataset used by
// scripts/bench/run.sh, and applies a small deterministic mutation to it.
//
//	go run ./scripts/bench/mkdata -out DIR -seed 1   # build (or reset) the dataset
//	go run ./scripts/bench/mkdata -mutate DIR        # apply the "day 2" change
//
// The dataset (~1.8 GiB, ~39k files) is:
//
//	go/{src,test,misc}/...      regular files copied from $(go env GOROOT)
//	synthetic/random.bin         400 MiB incompressible (ChaCha8)
//	synthetic/random-shifted.bin random.bin with 17 bytes inserted near the
//	                             start and 3 KiB rewritten in the middle
//	synthetic/app.log            400 MiB log-like text (zstd ~4-8x)
//	synthetic/vm.img             384 MiB runs of zeros, repeated 4 KiB blocks,
//	                             random and text extents
//	synthetic/small/dNN/...      24,000 small files (text and binary)
//
// DIR/.complete records the seed, generator version and Go version. If it
// matches, regeneration is skipped; if the dataset was mutated, the mutation
// is undone (cheaply) so that every run starts from the same bytes.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	genVersion = 1

	randomSize = 400 << 20
	logSize    = 400 << 20
	vmSize     = 384 << 20
	smallCount = 24000
	smallDirs  = 120

	insertAt   = 4109      // offset of the 17-byte insertion in random-shifted.bin
	insertLen  = 17        // bytes inserted
	changeAt   = 200 << 20 // offset (in random.bin) of the rewritten region
	changeLen  = 3 << 10   // bytes rewritten
	appendSize = 1 << 20   // bytes appended to app.log by -mutate

	nModify = 20
	nDelete = 3
	nNew    = 5

	completeName = ".complete"
	partialName  = ".mkdata-partial"
)

var (
	baseTime   = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	mutateTime = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	sourceDirs = []string{"src", "test", "misc"}
)

type marker struct {
	Version int    `json:"version"`
	Seed    uint64 `json:"seed"`
	Go      string `json:"go"`
	State   string `json:"state"` // "pristine" or "mutated"
}

func main() {
	out := flag.String("out", "", "build (or reset to pristine) the dataset in `DIR`")
	seed := flag.Uint64("seed", 1, "dataset seed")
	mutate := flag.String("mutate", "", "apply the deterministic small change to the existing dataset in `DIR`")
	reuse := flag.Bool("reuse", false, "with -out: never generate; fail unless the dataset already exists (a previous mutation is still undone)")
	force := flag.Bool("force", false, "with -out: regenerate even if DIR/.complete matches")
	goroot := flag.String("goroot", "", "Go tree to copy (default: $(go env GOROOT))")
	flag.Parse()

	if (*out == "") == (*mutate == "") {
		fmt.Fprintln(os.Stderr, "mkdata: exactly one of -out DIR or -mutate DIR is required")
		flag.Usage()
		os.Exit(2)
	}
	root, err := findGoroot(*goroot)
	if err != nil {
		fatal(err)
	}
	g := &gen{goroot: root, goVersion: goVersion(root)}
	if *out != "" {
		err = g.build(*out, *seed, *reuse, *force)
	} else {
		err = g.mutate(*mutate)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mkdata:", err)
	os.Exit(1)
}

func findGoroot(flagVal string) (string, error) {
	if flagVal != "" {
		return flagVal, nil
	}
	if v := os.Getenv("GOROOT"); v != "" {
		return v, nil
	}
	if b, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	}
	return "", errors.New("cannot determine GOROOT (set -goroot)")
}

func goVersion(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

type gen struct {
	goroot    string
	goVersion string
}

// rng returns a ChaCha8 generator keyed by the seed and a label, so every
// component of the dataset has its own independent deterministic stream.
func rng(seed uint64, label string) *rand.ChaCha8 {
	return rand.NewChaCha8(sha256.Sum256([]byte(fmt.Sprintf("bunker-bench/v%d/%d/%s", genVersion, seed, label))))
}

func readMarker(dir string) (*marker, error) {
	b, err := os.ReadFile(filepath.Join(dir, completeName))
	if err != nil {
		return nil, err
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", completeName, err)
	}
	return &m, nil
}

func writeMarker(dir string, m marker) error {
	b, _ := json.Marshal(m)
	p := filepath.Join(dir, completeName)
	if err := os.WriteFile(p+".tmp", append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Chtimes(p+".tmp", baseTime, baseTime); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

func (g *gen) build(dir string, seed uint64, reuse, force bool) error {
	m, err := readMarker(dir)
	if err == nil && !force && m.Version == genVersion && m.Seed == seed && m.Go == g.goVersion {
		if m.State != "pristine" {
			fmt.Printf("mkdata: %s exists (seed %d), undoing previous mutation\n", dir, seed)
			if err := g.unmutate(dir, *m); err != nil {
				return err
			}
		} else {
			fmt.Printf("mkdata: %s is complete (seed %d), skipping generation\n", dir, seed)
		}
		return nil
	}
	if reuse {
		if err != nil {
			return fmt.Errorf("-reuse: no usable dataset in %s: %w", dir, err)
		}
		return fmt.Errorf("-reuse: dataset in %s was made with seed %d/version %d/%s, want seed %d/version %d/%s",
			dir, m.Seed, m.Version, m.Go, seed, genVersion, g.goVersion)
	}
	if err := prepareDir(dir); err != nil {
		return err
	}
	start := time.Now()
	if err := os.WriteFile(filepath.Join(dir, partialName), nil, 0o644); err != nil {
		return err
	}
	nsrc, err := g.copySources(dir)
	if err != nil {
		return err
	}
	fmt.Printf("mkdata: copied %d files from %s (%s)\n", nsrc, g.goroot, time.Since(start).Round(time.Millisecond))
	syn := filepath.Join(dir, "synthetic")
	if err := os.MkdirAll(syn, 0o755); err != nil {
		return err
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"random.bin", func() error { return writeRandom(filepath.Join(syn, "random.bin"), seed) }},
		{"random-shifted.bin", func() error {
			return writeShifted(filepath.Join(syn, "random.bin"), filepath.Join(syn, "random-shifted.bin"), seed)
		}},
		{"app.log", func() error { return writeLog(filepath.Join(syn, "app.log"), seed) }},
		{"vm.img", func() error { return writeVM(filepath.Join(syn, "vm.img"), seed) }},
		{"small/", func() error { return writeSmall(filepath.Join(syn, "small"), seed) }},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("mkdata: wrote synthetic/%s (%s)\n", s.name, time.Since(t).Round(time.Millisecond))
	}
	if err := writeMarker(dir, marker{Version: genVersion, Seed: seed, Go: g.goVersion, State: "pristine"}); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, partialName)); err != nil {
		return err
	}
	fmt.Printf("mkdata: dataset complete in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// prepareDir empties dir, refusing to delete anything that does not look like
// a dataset made by this program.
func prepareDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		return err
	}
	if len(ents) == 0 {
		return nil
	}
	ok := false
	for _, e := range ents {
		if e.Name() == completeName || e.Name() == partialName {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("refusing to overwrite %s: not empty and not made by mkdata", dir)
	}
	fmt.Printf("mkdata: removing old dataset in %s\n", dir)
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// sourceFiles lists the regular files of the Go tree, as slash paths
// relative to GOROOT, in lexical order.
func (g *gen) sourceFiles() ([]string, error) {
	var files []string
	for _, sd := range sourceDirs {
		base := filepath.Join(g.goroot, sd)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				rel, err := filepath.Rel(g.goroot, p)
				if err != nil {
					return err
				}
				files = append(files, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no source files under %s", g.goroot)
	}
	return files, nil
}

func (g *gen) copySources(dir string) (int, error) {
	files, err := g.sourceFiles()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	for _, rel := range files {
		if err := g.copySource(dir, rel, buf); err != nil {
			return 0, err
		}
	}
	return len(files), nil
}

// copySource copies GOROOT/rel to dir/go/rel keeping permission bits and mtime.
func (g *gen) copySource(dir, rel string, buf []byte) error {
	src := filepath.Join(g.goroot, filepath.FromSlash(rel))
	dst := filepath.Join(dir, "go", filepath.FromSlash(rel))
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm()|0o200)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(out, in, buf); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(dst, st.Mode().Perm()|0o200); err != nil {
		return err
	}
	return os.Chtimes(dst, st.ModTime(), st.ModTime())
}

// fileWriter is a buffered file that gets a fixed mtime on close.
type fileWriter struct {
	f *os.File
	*bufio.Writer
}

func create(path string) (*fileWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &fileWriter{f: f, Writer: bufio.NewWriterSize(f, 1<<20)}, nil
}

func (w *fileWriter) close(mtime time.Time) error {
	if err := w.Flush(); err != nil {
		w.f.Close()
		return err
	}
	if err := w.f.Close(); err != nil {
		return err
	}
	return os.Chtimes(w.f.Name(), mtime, mtime)
}

func writeRandom(path string, seed uint64) error {
	w, err := create(path)
	if err != nil {
		return err
	}
	r := rng(seed, "random")
	buf := make([]byte, 1<<20)
	for n := 0; n < randomSize; n += len(buf) {
		r.Read(buf)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return w.close(baseTime)
}

// writeShifted writes random.bin with insertLen bytes inserted at insertAt
// and changeLen bytes at changeAt replaced: everything else is the same
// content at a shifted offset, which a content-defined chunker deduplicates.
func writeShifted(randomPath, path string, seed uint64) error {
	in, err := os.Open(randomPath)
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := create(path)
	if err != nil {
		return err
	}
	r := rng(seed, "shifted")
	ins := make([]byte, insertLen)
	r.Read(ins)
	chg := make([]byte, changeLen)
	r.Read(chg)
	if _, err := io.CopyN(w, in, insertAt); err != nil {
		return err
	}
	w.Write(ins)
	if _, err := io.CopyN(w, in, changeAt-insertAt); err != nil {
		return err
	}
	w.Write(chg)
	if _, err := in.Seek(changeLen, io.SeekCurrent); err != nil {
		return err
	}
	if _, err := io.Copy(w, in); err != nil {
		return err
	}
	return w.close(baseTime)
}

// ---- log-like text ----

var (
	levels   = []string{"DEBUG", "INFO ", "INFO ", "INFO ", "INFO ", "INFO ", "WARN ", "ERROR"}
	services = []string{"api-gateway", "auth", "billing", "catalog", "search", "indexer", "scheduler",
		"uploader", "thumbnailer", "mailer", "sync-worker", "metrics"}
	methods = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	paths   = []string{"/v1/objects/%d", "/v1/objects/%d/chunks", "/v1/users/%d", "/v1/users/%d/sessions",
		"/v2/search?q=%d", "/v1/buckets/%d/list", "/healthz", "/v1/jobs/%d/status", "/metrics"}
	statuses = []int{200, 200, 200, 200, 200, 200, 201, 204, 304, 400, 401, 403, 404, 404, 500, 503}
	vocab    = strings.Fields(`request completed started finished failed retrying timeout connection
		reset upstream downstream cache hit miss evicted stored loaded object chunk index pack
		snapshot user session token expired refreshed validated rejected accepted queue job worker
		scheduled running blocked waiting lock acquired released database query slow rows returned
		inserted updated deleted transaction commit rollback replica primary lag bytes sent received
		compressed decompressed checksum mismatch verified file opened closed read write flushed sync
		disk full quota exceeded rate limited backoff circuit breaker open half closed healthy unhealthy
		config reloaded feature flag enabled disabled tenant region zone node pod container restarted
		memory pressure gc pause heap allocated freed goroutine leak detected request id trace span
		parent child batch size limit offset cursor page next previous payload invalid missing field
		schema migration applied pending version mismatch upgrade downgrade certificate renewed dns
		resolved failed handshake tls peer closed stream reset keepalive ping pong shutdown graceful`)
)

// logGen produces log lines; state advances deterministically.
type logGen struct {
	r  *rand.Rand
	ts time.Time
	b  []byte
}

func newLogGen(seed uint64, label string, start time.Time) *logGen {
	return &logGen{r: rand.New(rng(seed, label)), ts: start}
}

func (g *logGen) line() []byte {
	r := g.r
	b := g.b[:0]
	g.ts = g.ts.Add(time.Duration(r.IntN(40000)) * time.Microsecond)
	b = g.ts.AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	lvl := levels[r.IntN(len(levels))]
	b = append(b, lvl...)
	b = append(b, ' ')
	svc := r.IntN(len(services))
	b = append(b, services[svc]...)
	b = append(b, "[pid="...)
	b = strconv.AppendInt(b, int64(1000+svc*97+r.IntN(3)), 10)
	b = append(b, "] req_id="...)
	var id [8]byte
	binary.LittleEndian.PutUint64(id[:], r.Uint64())
	const hexdig = "0123456789abcdef"
	for _, c := range id[:4] {
		b = append(b, hexdig[c>>4], hexdig[c&15])
	}
	b = append(b, " user=u"...)
	b = strconv.AppendInt(b, int64(r.IntN(5000)), 10)
	b = append(b, " method="...)
	b = append(b, methods[r.IntN(len(methods))]...)
	b = append(b, " path="...)
	p := paths[r.IntN(len(paths))]
	if strings.Contains(p, "%d") {
		b = fmt.Appendf(b, p, r.IntN(10000))
	} else {
		b = append(b, p...)
	}
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(statuses[r.IntN(len(statuses))]), 10)
	b = append(b, " dur_ms="...)
	b = strconv.AppendFloat(b, float64(r.IntN(50000))/100, 'f', 2, 64)
	b = append(b, " bytes="...)
	b = strconv.AppendInt(b, int64(r.IntN(1<<16)), 10)
	b = append(b, ` msg="`...)
	nw := 3 + r.IntN(8)
	for i := 0; i < nw; i++ {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, vocab[r.IntN(len(vocab))]...)
	}
	b = append(b, '"', '\n')
	if lvl == "ERROR" && r.IntN(4) == 0 {
		// an occasional multi-line stack trace, as real logs have
		b = append(b, "goroutine 1 [running]:\nmain.handle(0xc000"...)
		b = strconv.AppendInt(b, int64(r.IntN(1<<20)), 16)
		b = append(b, ")\n\t/app/server/handler.go:"...)
		b = strconv.AppendInt(b, int64(20+r.IntN(400)), 10)
		b = append(b, " +0x1a5\nnet/http.HandlerFunc.ServeHTTP(...)\n\t/usr/local/go/src/net/http/server.go:2220\n"...)
	}
	g.b = b
	return b
}

// writeLines writes exactly size bytes of log lines to w.
func (g *logGen) writeLines(w io.Writer, size int64) error {
	var n int64
	for n < size {
		l := g.line()
		if rem := size - n; int64(len(l)) > rem {
			l = l[:rem]
			if rem > 0 {
				l[rem-1] = '\n'
			}
		}
		if _, err := w.Write(l); err != nil {
			return err
		}
		n += int64(len(l))
	}
	return nil
}

func writeLog(path string, seed uint64) error {
	w, err := create(path)
	if err != nil {
		return err
	}
	g := newLogGen(seed, "log", time.Date(2023, 11, 2, 6, 0, 0, 0, time.UTC))
	if err := g.writeLines(w, logSize); err != nil {
		return err
	}
	return w.close(baseTime)
}

// ---- VM-image-like file ----

func writeVM(path string, seed uint64) error {
	w, err := create(path)
	if err != nil {
		return err
	}
	cr := rng(seed, "vm")
	r := rand.New(cr)
	const bs = 4096
	// A pool of blocks that recur all over the image (libraries, package
	// caches, filesystem metadata templates...).
	pool := make([][]byte, 256)
	tg := newLogGen(seed, "vm-text", baseTime)
	for i := range pool {
		blk := make([]byte, bs)
		if i%2 == 0 {
			rng(seed, fmt.Sprintf("vm-pool-%d", i)).Read(blk)
		} else {
			var tb bytes.Buffer
			tg.writeLines(&tb, bs)
			copy(blk, tb.Bytes())
		}
		pool[i] = blk
	}
	zero := make([]byte, bs)
	blk := make([]byte, bs)
	var tb bytes.Buffer
	for written := 0; written < vmSize; {
		runLen := 1 + r.IntN(512) // blocks
		kind := r.IntN(100)
		for i := 0; i < runLen && written < vmSize; i++ {
			var b []byte
			switch {
			case kind < 35: // unallocated space
				b = zero
			case kind < 60: // duplicated blocks
				b = pool[r.IntN(len(pool))]
			case kind < 80: // compressed / encrypted payloads
				cr.Read(blk)
				b = blk
			default: // text (configs, logs, sources)
				tb.Reset()
				tg.writeLines(&tb, bs)
				b = tb.Bytes()
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
			written += bs
		}
	}
	return w.close(baseTime)
}

// ---- many small files ----

var smallExts = []string{".json", ".txt", ".cfg", ".md", ".bin", ".dat"}

func writeSmallFile(path string, r *rand.Rand, tg *logGen, kind int, buf []byte) error {
	size := 64 + r.IntN(8192)
	if r.IntN(20) == 0 {
		size += r.IntN(64 << 10)
	}
	var content []byte
	if kind < 4 { // text
		var tb bytes.Buffer
		tb.Grow(size)
		if err := tg.writeLines(&tb, int64(size)); err != nil {
			return err
		}
		content = tb.Bytes()
	} else { // binary
		content = buf[:size]
		for i := 0; i+8 <= len(content); i += 8 {
			binary.LittleEndian.PutUint64(content[i:], r.Uint64())
		}
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		return err
	}
	t := baseTime.Add(time.Duration(r.IntN(1<<20)) * time.Second)
	return os.Chtimes(path, t, t)
}

func writeSmall(dir string, seed uint64) error {
	r := rand.New(rng(seed, "small"))
	tg := newLogGen(seed, "small-text", baseTime)
	buf := make([]byte, 128<<10)
	for d := 0; d < smallDirs; d++ {
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%03d", d)), 0o755); err != nil {
			return err
		}
	}
	for i := 0; i < smallCount; i++ {
		kind := r.IntN(len(smallExts))
		p := filepath.Join(dir, fmt.Sprintf("d%03d", i%smallDirs), fmt.Sprintf("f%05d%s", i, smallExts[kind]))
		if err := writeSmallFile(p, r, tg, kind, buf); err != nil {
			return err
		}
	}
	return nil
}

// ---- mutation ----

type plan struct {
	modify []string // source paths (slash, relative to GOROOT)
	delete []string
	create []string // dataset-relative slash paths of new files
}

// plan picks the files to change from the pristine Go tree, so the same plan
// can be recomputed to undo the mutation.
func (g *gen) plan(seed uint64) (*plan, error) {
	files, err := g.sourceFiles()
	if err != nil {
		return nil, err
	}
	var goFiles []string
	for _, f := range files {
		if strings.HasPrefix(f, "src/") && strings.HasSuffix(f, ".go") && !strings.Contains(f, "/testdata/") {
			goFiles = append(goFiles, f)
		}
	}
	sort.Strings(goFiles)
	if len(goFiles) < nModify+nDelete {
		return nil, errors.New("too few Go source files to mutate")
	}
	r := rand.New(rng(seed, "mutate-plan"))
	perm := r.Perm(len(goFiles))
	p := &plan{}
	for _, i := range perm[:nModify] {
		p.modify = append(p.modify, goFiles[i])
	}
	for _, i := range perm[nModify : nModify+nDelete] {
		p.delete = append(p.delete, goFiles[i])
	}
	for i := 0; i < nNew; i++ {
		if i < 3 {
			d := filepath.ToSlash(filepath.Dir(p.modify[i]))
			p.create = append(p.create, fmt.Sprintf("go/%s/zz_bench_new_%d.go", d, i))
		} else {
			p.create = append(p.create, fmt.Sprintf("synthetic/new/note-%d.txt", i))
		}
	}
	return p, nil
}

func (g *gen) mutate(dir string) error {
	m, err := readMarker(dir)
	if err != nil {
		return fmt.Errorf("-mutate: %s has no complete dataset: %w", dir, err)
	}
	if m.Version != genVersion || m.Go != g.goVersion {
		return fmt.Errorf("-mutate: dataset in %s was made by version %d/%s, want %d/%s", dir, m.Version, m.Go, genVersion, g.goVersion)
	}
	if m.State != "pristine" {
		if err := g.unmutate(dir, *m); err != nil {
			return err
		}
	}
	p, err := g.plan(m.Seed)
	if err != nil {
		return err
	}
	m.State = "mutated"
	if err := writeMarker(dir, *m); err != nil {
		return err
	}
	r := rand.New(rng(m.Seed, "mutate"))
	// 1. modify source files: insert a line near the middle and rewrite a
	// line near the end, as an edit would.
	for i, rel := range p.modify {
		path := filepath.Join(dir, "go", filepath.FromSlash(rel))
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		mid := len(b) / 2
		if j := bytes.IndexByte(b[mid:], '\n'); j >= 0 {
			mid += j + 1
		}
		ins := fmt.Sprintf("// bench mutation %d: %016x\n", i, r.Uint64())
		nb := make([]byte, 0, len(b)+len(ins)+64)
		nb = append(nb, b[:mid]...)
		nb = append(nb, ins...)
		nb = append(nb, b[mid:]...)
		nb = append(nb, fmt.Sprintf("\n// edited %d %x\n", i, r.Uint64())...)
		if err := os.WriteFile(path, nb, 0o644); err != nil {
			return err
		}
		t := mutateTime.Add(time.Duration(i) * time.Second)
		if err := os.Chtimes(path, t, t); err != nil {
			return err
		}
	}
	// 2. delete files.
	for _, rel := range p.delete {
		if err := os.Remove(filepath.Join(dir, "go", filepath.FromSlash(rel))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	// 3. append to the log.
	logPath := filepath.Join(dir, "synthetic", "app.log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	lg := newLogGen(m.Seed, "log-append", time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC))
	if err := lg.writeLines(bw, appendSize); err != nil {
		f.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chtimes(logPath, mutateTime, mutateTime); err != nil {
		return err
	}
	// 4. new small files.
	tg := newLogGen(m.Seed, "new-files", mutateTime)
	buf := make([]byte, 128<<10)
	for i, rel := range p.create {
		kind := 0 // text
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, filepath.FromSlash(rel))), 0o755); err != nil {
			return err
		}
		if err := writeSmallFile(filepath.Join(dir, filepath.FromSlash(rel)), r, tg, kind, buf); err != nil {
			return err
		}
		t := mutateTime.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(rel)), t, t); err != nil {
			return err
		}
	}
	fmt.Printf("mkdata: mutated %s: %d files modified, %d deleted, %d created, %d bytes appended to synthetic/app.log\n",
		dir, len(p.modify), len(p.delete), len(p.create), appendSize)
	return nil
}

// unmutate restores the pristine dataset after mutate (idempotent).
func (g *gen) unmutate(dir string, m marker) error {
	p, err := g.plan(m.Seed)
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	for _, rel := range append(append([]string{}, p.modify...), p.delete...) {
		if err := g.copySource(dir, rel, buf); err != nil {
			return err
		}
	}
	for _, rel := range p.create {
		if err := os.Remove(filepath.Join(dir, filepath.FromSlash(rel))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	_ = os.Remove(filepath.Join(dir, "synthetic", "new"))
	logPath := filepath.Join(dir, "synthetic", "app.log")
	if err := os.Truncate(logPath, logSize); err != nil {
		return err
	}
	if err := os.Chtimes(logPath, baseTime, baseTime); err != nil {
		return err
	}
	m.State = "pristine"
	return writeMarker(dir, m)
}
