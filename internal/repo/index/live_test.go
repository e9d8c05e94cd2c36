package index

import (
	"testing"

	"bunker/internal/repo"
)

func TestLiveSkipsSupersededFiles(t *testing.T) {
	a, b, c := repo.ID{1}, repo.ID{2}, repo.ID{3}
	pa, pb, pc := repo.ID{11}, repo.ID{12}, repo.ID{13}
	files := map[repo.ID]*File{
		a: {Packs: []PackEntry{{ID: pa}}},
		b: {Packs: []PackEntry{{ID: pb}}},
		c: {Supersedes: []repo.ID{a, b}, Packs: []PackEntry{{ID: pc}}},
	}
	got := Live(files)
	if len(got) != 1 || got[0].ID != pc {
		t.Fatalf("Live = %v, want only the superseding file's pack", got)
	}
	delete(files, c) // the superseding file is unreadable: the old ones count
	if got := Live(files); len(got) != 2 {
		t.Fatalf("Live without the superseding file = %v, want both packs", got)
	}
}
