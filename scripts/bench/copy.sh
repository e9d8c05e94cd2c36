#!/usr/bin/env bash
# Off-site copy: pack-level copy throughput next to the raw disk throughput
# (cp of the same pack files), a re-encoding copy for comparison, and a copy
# with nothing new on a source of COPY_SNAPSHOTS (default 3000) snapshots.
# Run by `make bench` after run.sh (it copies run.sh's Bunker repository of
# the dataset), or alone as `make bench-copy`. See scripts/bench/README.md.
#
# Environment: BENCH_DIR, BUNKER_BIN (as run.sh), COPY_SNAPSHOTS.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-$repo_root/.bench}
BUNKER_BIN=${BUNKER_BIN:-$repo_root/bin/bunker}
COPY_SNAPSHOTS=${COPY_SNAPSHOTS:-3000}

say() { printf '[bench-copy %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
SRC=$BENCH_DIR/repo-bunker
MANY=$BENCH_DIR/copy-pristine
WORK=$BENCH_DIR/copy
LOGS=$BENCH_DIR/logs
mkdir -p "$LOGS"
[[ -x /usr/bin/time ]] || { say "installing GNU time"; apt-get install -y -qq time >/dev/null; }
[[ -f $BENCH_DIR/password ]] || echo "bunker-bench-password" >"$BENCH_DIR/password"
PW=$BENCH_DIR/password
export BUNKER_PASSWORD_FILE=$PW
unset BUNKER_REPOSITORY

# measure NAME CMD...: wall seconds and peak RSS (KiB) into $NAME_s / $NAME_kb.
measure() {
	local name=$1
	shift
	sync
	/usr/bin/time -f '%e %M' -o "$LOGS/copy-$name.time" "$@" >"$LOGS/copy-$name.out" 2>"$LOGS/copy-$name.err" || {
		cat "$LOGS/copy-$name.err" >&2
		exit 1
	}
	read -r s kb <"$LOGS/copy-$name.time"
	printf -v "${name}_s" '%s' "$s"
	printf -v "${name}_kb" '%s' "$kb"
}
mibps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / 1048576 / s; else print "-" }'; }

if [[ ! -f $SRC/config ]]; then
	say "no Bunker repository of the dataset at $SRC: run scripts/bench/run.sh first (make bench does)"
	exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK"
pack_bytes=$(du -sb "$SRC/data" | cut -f1)
cat "$SRC"/data/*/* >/dev/null # warm: every copy reads from the page cache

say "raw disk: cp -r of the pack files, then sync"
measure raw sh -c "cp -r '$SRC/data' '$WORK/raw' && sync"
rm -rf "$WORK/raw"

say "pack-level copy"
"$BUNKER_BIN" -q -r "$WORK/pack" init --copy-params-from "$SRC" --from-password-file "$PW"
measure pack sh -c "'$BUNKER_BIN' copy --from-repo '$SRC' --from-password-file '$PW' --to-repo '$WORK/pack' && sync"
pack_copied=$(du -sb "$WORK/pack/data" | cut -f1)
rm -rf "$WORK/pack"

say "re-encoding copy"
"$BUNKER_BIN" -q -r "$WORK/reencode" init
measure reencode sh -c "'$BUNKER_BIN' copy --from-repo '$SRC' --from-password-file '$PW' --to-repo '$WORK/reencode' && sync"
rm -rf "$WORK/reencode"

if [[ ! -f $MANY/.complete-$COPY_SNAPSHOTS ]]; then
	rm -rf "$MANY"
	say "building a repository of $COPY_SNAPSHOTS snapshots"
	(cd "$repo_root" && go run ./scripts/bench/mkcopyrepo -repo "$MANY" -password-file "$PW" -snapshots "$COPY_SNAPSHOTS")
	touch "$MANY/.complete-$COPY_SNAPSHOTS"
fi
say "first copy of $COPY_SNAPSHOTS snapshots, then copies with nothing new"
"$BUNKER_BIN" -q -r "$WORK/many-pack" init --copy-params-from "$MANY" --from-password-file "$PW"
"$BUNKER_BIN" -q -r "$WORK/many-reencode" init
measure manyfirst "$BUNKER_BIN" copy --from-repo "$MANY" --from-password-file "$PW" --to-repo "$WORK/many-pack"
measure manyfirstre "$BUNKER_BIN" copy --from-repo "$MANY" --from-password-file "$PW" --to-repo "$WORK/many-reencode"
noop=()
for i in 1 2 3; do
	measure noop "$BUNKER_BIN" copy --from-repo "$MANY" --from-password-file "$PW" --to-repo "$WORK/many-pack"
	grep -q "^0 of $COPY_SNAPSHOTS selected snapshots copied ($COPY_SNAPSHOTS already in the target" "$LOGS/copy-noop.out" || {
		say "the copy with nothing new copied something:"
		cat "$LOGS/copy-noop.out" >&2
		exit 1
	}
	noop+=("$noop_s")
done
measure noopre "$BUNKER_BIN" copy --from-repo "$MANY" --from-password-file "$PW" --to-repo "$WORK/many-reencode"
noop_sorted=$(printf '%s\n' "${noop[@]}" | sort -n | tr '\n' ' ')

{
	echo
	echo "Off-site copy (local to local, same disk; every copy verifies every blob and fsyncs every file)"
	printf '  %-44s %8s s %6s MiB/s %6d MiB peak RSS\n' "raw disk: cp -r of the packs + sync" "$raw_s" "$(mibps "$pack_bytes" "$raw_s")" $((raw_kb / 1024))
	printf '  %-44s %8s s %6s MiB/s %6d MiB peak RSS\n' "copy, pack level (init --copy-params-from)" "$pack_s" "$(mibps "$pack_bytes" "$pack_s")" $((pack_kb / 1024))
	printf '  %-44s %8s s %6s MiB/s %6d MiB peak RSS\n' "copy, re-encoding" "$reencode_s" "$(mibps "$pack_bytes" "$reencode_s")" $((reencode_kb / 1024))
	printf '  source packs %d MiB; the pack-level copy stored %d MiB\n' $((pack_bytes / 1048576)) $((pack_copied / 1048576))
	printf '  %-44s %8s s %6d MiB peak RSS\n' "first copy of $COPY_SNAPSHOTS snapshots, pack level" "$manyfirst_s" $((manyfirst_kb / 1024))
	printf '  %-44s %8s s %6d MiB peak RSS\n' "first copy of $COPY_SNAPSHOTS snapshots, re-encoding" "$manyfirstre_s" $((manyfirstre_kb / 1024))
	printf '  %-44s %8s s (3 runs: %s) %6d MiB peak RSS\n' "copy with nothing new, $COPY_SNAPSHOTS snapshots" "${noop[0]}" "$noop_sorted" $((noop_kb / 1024))
	printf '  %-44s %8s s %6d MiB peak RSS\n' "the same, re-encoded target" "$noopre_s" $((noopre_kb / 1024))
} | tee -a "$BENCH_DIR/results.txt"
rm -rf "$WORK"
