// Package lint holds checks on the code itself. The layer rule keeps imports
// pointing down, as STYLE.md asks: backends know nothing of repositories, the
// format internals are used only by the repository (and by the checker, whose
// job is to verify that format), policy is pure, api imports nothing of ours.
package lint

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "bunker/"

// rule: packages matching `pkg` (a prefix of the directory) may import only
// the allowed internal packages ("x/..." allows x and everything below it).
type rule struct {
	pkg     string
	allowed []string
}

var formatInternals = []string{"internal/repo/crypto", "internal/repo/chunker", "internal/repo/pack", "internal/repo/index"}

var rules = []rule{
	{"internal/backend", []string{"internal/backend/..."}},
	// The vocabulary (IDs, blob types, the interfaces the pipelines use)
	// imports nothing of ours; a new internal/repo/x matches it until it
	// gets a rule of its own.
	{"internal/repo", []string{}},
	{"internal/repo/crypto", []string{"internal/repo"}},
	{"internal/repo/chunker", []string{}},
	{"internal/repo/pack", []string{"internal/repo", "internal/repo/crypto"}},
	{"internal/repo/index", []string{"internal/repo", "internal/repo/pack"}},
	{"internal/repo/repository", []string{"internal/repo/...", "internal/backend/...", "internal/snapshot"}},
	{"internal/repo/repotest", []string{"internal/repo/...", "internal/backend/...", "internal/snapshot"}},
	{"internal/snapshot", []string{"internal/repo"}},
	{"internal/policy", []string{"internal/snapshot", "internal/repo"}},
	{"internal/api", []string{}},
	{"internal/fs", []string{"internal/snapshot", "internal/repo", "internal/fs/..."}},
	{"internal/archiver", []string{"internal/repo", "internal/snapshot", "internal/fs"}},
	{"internal/restorer", []string{"internal/repo", "internal/snapshot", "internal/fs"}},
	{"internal/checker", []string{"internal/repo/...", "internal/snapshot", "internal/backend"}},
	{"internal/pruner", []string{"internal/repo/...", "internal/snapshot", "internal/backend"}},
	{"internal/repair", []string{"internal/repo/...", "internal/snapshot", "internal/backend"}},
	{"internal/replicate", []string{"internal/repo/...", "internal/snapshot", "internal/backend"}},
	{"internal/ui", []string{}},
	{"internal/pki", []string{}},
	{"internal/conf", []string{}},
	{"internal/director", []string{"internal/conf", "internal/pki", "internal/policy", "internal/snapshot", "internal/repo", "internal/api"}},
	{"internal/agent", []string{"internal/conf", "internal/pki", "internal/api"}},
	{"internal/server", []string{"internal/backend/...", "internal/repo/crypto"}},
	{"internal/server/servertest", []string{"internal/server"}},
}

func allowedImport(pkg, imp string) (bool, string) {
	var best *rule
	for i := range rules {
		r := &rules[i]
		if pkg == r.pkg || strings.HasPrefix(pkg, r.pkg+"/") {
			if best == nil || len(r.pkg) > len(best.pkg) {
				best = r
			}
		}
	}
	if best == nil {
		return true, ""
	}
	if strings.HasPrefix(imp, pkg+"/") && pkg != "internal/repo" {
		return true, "" // own subpackages (tests helpers and the like); not for the vocabulary, whose subpackages are the format
	}
	for _, fi := range formatInternals {
		if (imp == fi || strings.HasPrefix(imp, fi+"/")) && !strings.HasPrefix(pkg, "internal/repo") && pkg != "internal/checker" && pkg != "internal/pruner" && pkg != "internal/repair" && pkg != "internal/replicate" && pkg != "internal/server" {
			return false, "format internals are imported only by internal/repo/..."
		}
	}
	for _, a := range best.allowed {
		if imp == a {
			return true, ""
		}
		if base, ok := strings.CutSuffix(a, "/..."); ok && (imp == base || strings.HasPrefix(imp, base+"/")) {
			return true, ""
		}
	}
	return false, "rule for " + best.pkg + " allows only " + strings.Join(best.allowed, ", ")
}

func TestLayers(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	err = filepath.WalkDir(filepath.Join(root, "internal"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(path, module) {
				continue
			}
			checked++
			if ok, why := allowedImport(rel, strings.TrimPrefix(path, module)); !ok {
				t.Errorf("%s imports %s: %s", strings.TrimPrefix(p, root+"/"), path, why)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no imports checked: the walk found no code")
	}
}

func TestRuleCatchesViolations(t *testing.T) {
	for _, c := range []struct{ pkg, imp string }{
		{"internal/backend/local", "internal/repo/repository"},
		{"internal/restorer", "internal/repo/pack"},
		{"internal/archiver", "internal/repo/repository"},
		{"internal/snapshot", "internal/backend"},
		{"internal/repo", "internal/repo/chunker"},
		{"internal/repo", "internal/snapshot"},
	} {
		if ok, _ := allowedImport(c.pkg, c.imp); ok {
			t.Errorf("%s importing %s should be refused", c.pkg, c.imp)
		}
	}
}
