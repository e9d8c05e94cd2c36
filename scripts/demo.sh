#!/usr/bin/env bash
# The main job on embedded defaults: a local repository, no servers. Backs up
# this source tree, changes a file, backs up again, restores the latest
# snapshot, verifies every byte and checks the whole repository, then shows
# what a retention policy would keep (forget --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
bunker=${BUNKER_BIN:-$PWD/bin/bunker}
demo=$PWD/.demo
rm -rf "$demo"
mkdir -p "$demo/data"
cp -a cmd internal docs README.md "$demo/data/" 2>/dev/null || cp -a cmd internal "$demo/data/"
head -c 1000000 /dev/urandom > "$demo/data/random.bin"
umask 077
head -c 24 /dev/urandom | base64 > "$demo/password"
export BUNKER_REPOSITORY=$demo/repo BUNKER_PASSWORD_FILE=$demo/password
run() { echo; echo "\$ bunker $*"; "$bunker" "$@"; }
run init
run backup "$demo/data"
echo "one more line" >> "$demo/data/README.md"
run backup "$demo/data"
run snapshots
first=$("$bunker" snapshots --json | grep -o '"id":"[0-9a-f]*"' | head -n 1 | cut -d'"' -f4)
run diff "$first" latest
run restore latest --target "$demo/restored" --verify
echo; echo "\$ diff -r data restored/...data"
diff -r "$demo/data" "$demo/restored$demo/data" && echo "identical"
run check --read-data
run stats
run forget --keep-last 1 --dry-run
