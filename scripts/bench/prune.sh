#!/usr/bin/env bash
# Prune at scale: time and peak memory of `bunker prune` on a repository of
# PRUNE_BLOBS (default 1,000,000) data blobs. Run by `make bench` after run.sh,
# or alone as `make bench-prune`. See scripts/bench/README.md.
#
# The repository (built once by scripts/bench/mkprunerepo and kept in
# $BENCH_DIR/prune-pristine) has 20 snapshots whose blobs are interleaved in
# every pack. `forget --keep-last 10` then leaves every pack half unused, so
# prune reads the whole index, walks every tree, repacks everything and
# deletes every old pack: the heaviest prune for the size.
#
# Environment: BENCH_DIR, BUNKER_BIN (as run.sh), PRUNE_BLOBS.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-$repo_root/.bench}
BUNKER_BIN=${BUNKER_BIN:-$repo_root/bin/bunker}
PRUNE_BLOBS=${PRUNE_BLOBS:-1000000}

say() { printf '[bench-prune %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
PRISTINE=$BENCH_DIR/prune-pristine
WORK=$BENCH_DIR/prune-work
LOGS=$BENCH_DIR/logs
mkdir -p "$LOGS"
[[ -x /usr/bin/time ]] || { say "installing GNU time"; apt-get install -y -qq time >/dev/null; }
[[ -f $BENCH_DIR/password ]] || echo "bunker-bench-password" >"$BENCH_DIR/password"

export BUNKER_PASSWORD_FILE=$BENCH_DIR/password
if [[ ! -f $PRISTINE/.complete-$PRUNE_BLOBS ]]; then
	rm -rf "$PRISTINE"
	say "building a repository of $PRUNE_BLOBS blobs"
	(cd "$repo_root" && go run ./scripts/bench/mkprunerepo -repo "$PRISTINE" -password-file "$BENCH_DIR/password" -blobs "$PRUNE_BLOBS")
	touch "$PRISTINE/.complete-$PRUNE_BLOBS"
fi

rm -rf "$WORK"
cp -a "$PRISTINE" "$WORK"
export BUNKER_REPOSITORY=$WORK

# measure NAME CMD...: wall seconds and peak RSS (KiB) into $NAME_s / $NAME_kb.
measure() {
	local name=$1
	shift
	/usr/bin/time -f '%e %M' -o "$LOGS/prune-$name.time" "$@" >"$LOGS/prune-$name.out" 2>"$LOGS/prune-$name.err" || {
		cat "$LOGS/prune-$name.err" >&2
		exit 1
	}
	read -r s kb <"$LOGS/prune-$name.time"
	printf -v "${name}_s" '%s' "$s"
	printf -v "${name}_kb" '%s' "$kb"
}

size_before=$(du -sk "$WORK" | cut -f1)
say "forget --keep-last 10"
measure forget "$BUNKER_BIN" forget --keep-last 10
say "prune --dry-run"
measure dry "$BUNKER_BIN" prune --dry-run
# The real prune waits 20 s between its new index and its deletions (the
# backup commit window, docs/format.md 11b); the bench shortens the wait to
# 1 s and reports it, so that the figure is the work done.
say "prune"
BUNKER_TEST_PRUNE_WAIT=1s measure prune "$BUNKER_BIN" prune
size_after=$(du -sk "$WORK" | cut -f1)
say "check"
measure check "$BUNKER_BIN" check

blobs_line=$(grep -E '^(used|unused):' "$LOGS/prune-dry.out" | tr '\n' ' ')
{
	echo
	echo "Prune at scale: $PRUNE_BLOBS data blobs, 20 snapshots, forget --keep-last 10 (every pack half unused)"
	echo "  $blobs_line"
	printf '  %-34s %8s s %8d MiB peak RSS\n' "forget --keep-last 10" "$forget_s" $((forget_kb / 1024))
	printf '  %-34s %8s s %8d MiB peak RSS\n' "prune --dry-run (plan only)" "$dry_s" $((dry_kb / 1024))
	printf '  %-34s %8s s %8d MiB peak RSS  (includes a 1 s wait)\n' "prune (repack all, delete)" "$prune_s" $((prune_kb / 1024))
	printf '  %-34s %8s s %8d MiB peak RSS\n' "check (structure) after prune" "$check_s" $((check_kb / 1024))
	printf '  repository: %d MiB before, %d MiB after\n' $((size_before / 1024)) $((size_after / 1024))
} | tee -a "$BENCH_DIR/results.txt"
rm -rf "$WORK"
