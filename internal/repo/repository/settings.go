package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"bunker/internal/backend"
	"bunker/internal/repo"
)

// Settings are the repository's changeable settings. Unlike the config,
// which is written once, they are stored as sealed settings files: a new
// file supersedes the ones it names, and the newest file that no other
// supersedes holds the settings in force.
type Settings struct {
	// MinRetention is the age (a calendar duration such as "14d") under
	// which forget never removes a snapshot; empty means no floor.
	MinRetention string `json:"min_retention,omitempty"`
}

type settingsFile struct {
	Time       time.Time `json:"time"`
	Supersedes []repo.ID `json:"supersedes,omitempty"`
	Settings   Settings  `json:"settings"`
}

// LoadSettings returns the settings in force and the files that hold the
// current and older versions.
func (r *Repository) LoadSettings(ctx context.Context) (Settings, []repo.ID, error) {
	ids, err := r.List(ctx, backend.SettingsFile)
	if err != nil {
		return Settings{}, nil, fmt.Errorf("list settings: %w", err)
	}
	files := map[repo.ID]settingsFile{}
	superseded := map[repo.ID]bool{}
	for _, id := range ids {
		plain, err := r.LoadUnpacked(ctx, backend.SettingsFile, id)
		if errors.Is(err, backend.ErrNotExist) {
			continue
		}
		if err != nil {
			return Settings{}, nil, fmt.Errorf("settings: %w", err)
		}
		var f settingsFile
		if err := json.Unmarshal(plain, &f); err != nil {
			return Settings{}, nil, fmt.Errorf("settings %s: %w: %w", id.Short(), ErrCorrupt, err)
		}
		files[id] = f
		for _, s := range f.Supersedes {
			superseded[s] = true
		}
	}
	var cur settingsFile
	for id, f := range files {
		if !superseded[id] && (cur.Time.IsZero() || f.Time.After(cur.Time)) {
			cur = f
		}
	}
	return cur.Settings, ids, nil
}

// SaveSettings stores s as the settings in force, superseding every
// settings file there is, and then removes those (a storage that refuses
// deletions keeps them, harmlessly).
func (r *Repository) SaveSettings(ctx context.Context, s Settings) error {
	_, old, err := r.LoadSettings(ctx)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(settingsFile{Time: time.Now().UTC(), Supersedes: old, Settings: s})
	if _, err := r.SaveUnpacked(ctx, backend.SettingsFile, b); err != nil {
		return fmt.Errorf("save settings: %w", err)
	}
	for _, id := range old {
		_ = r.be.Remove(ctx, backend.Handle{Type: backend.SettingsFile, Name: id.String()})
	}
	return nil
}
