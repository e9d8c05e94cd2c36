#!/usr/bin/env bash
# Bunker and restic against the same real S3 server (versitygw on
# 127.0.0.1, the version `make test` installs), on the same data, in the same
# run: first backup and full restore, with throughput and ratios. Run by
# `make bench` after run.sh (it reuses its dataset), or alone as
# `make bench-s3`. See scripts/bench/README.md.
#
# Environment: BENCH_DIR, BUNKER_BIN (as run.sh), BUNKER_VERSITYGW (the
# server binary; the Makefile passes the pinned one).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-$repo_root/.bench}
BUNKER_BIN=${BUNKER_BIN:-$repo_root/bin/bunker}
VGW=${BUNKER_VERSITYGW:?set BUNKER_VERSITYGW to the versitygw binary (make bench-s3 does)}

say() { printf '[bench-s3 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
DATA=$BENCH_DIR/data
LOGS=$BENCH_DIR/logs
WORK=$BENCH_DIR/s3
mkdir -p "$LOGS"
[[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null
command -v restic >/dev/null || apt-get install -y -qq restic >/dev/null
if [[ ! -d $DATA/go ]]; then
	say "building the dataset"
	(cd "$repo_root" && go run ./scripts/bench/mkdata -out "$DATA" -seed 1) >&2
fi
# The S3 run uses part of the dataset: the Go tree, the log and the random file.
SRC=("$DATA/go" "$DATA/synthetic/app.log" "$DATA/synthetic/random.bin")
src_bytes=$(find "${SRC[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d", s}')
cat "${SRC[@]:1}" >/dev/null
find "$DATA/go" -type f -print0 | xargs -0 cat >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK/root" "$WORK/versions" "$WORK/restore"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17171)
export ROOT_ACCESS_KEY_ID=benchaccess ROOT_SECRET_ACCESS_KEY=benchsecret0123456789
"$VGW" --port "127.0.0.1:$port" --quiet posix --versioning-dir "$WORK/versions" "$WORK/root" >"$LOGS/versitygw.log" 2>&1 &
vgw_pid=$!
trap 'kill $vgw_pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

export AWS_ACCESS_KEY_ID=$ROOT_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$ROOT_SECRET_ACCESS_KEY
[[ -f $BENCH_DIR/password ]] || echo "bunker-bench-password" >"$BENCH_DIR/password"
export BUNKER_PASSWORD_FILE=$BENCH_DIR/password RESTIC_PASSWORD_FILE=$BENCH_DIR/password

declare -A T=()
# measure NAME CMD...: wall seconds into T[NAME].
measure() {
	local name=$1
	shift
	sync
	if ! /usr/bin/time -f '%e' -o "$LOGS/s3-$name.time" "$@" >"$LOGS/s3-$name.log" 2>&1; then
		say "$name failed; see $LOGS/s3-$name.log"
		T[$name]=FAIL
		return 0
	fi
	T[$name]=$(cat "$LOGS/s3-$name.time")
}

say "bunker: init, backup, restore"
export BUNKER_REPOSITORY=s3:http://127.0.0.1:$port/bunker-bench/repo
"$BUNKER_BIN" init -q
measure bunker_backup "$BUNKER_BIN" backup -q --host bench "${SRC[@]}"
rm -rf "$WORK/restore"/*
measure bunker_restore "$BUNKER_BIN" restore -q latest --target "$WORK/restore"
bunker_ok=$(diff -rq "$DATA/go" "$WORK/restore$DATA/go" >/dev/null && cmp -s "$DATA/synthetic/random.bin" "$WORK/restore$DATA/synthetic/random.bin" && echo yes || echo NO)
rm -rf "$WORK/restore"/*

say "restic: init, backup, restore"
export RESTIC_REPOSITORY=s3:http://127.0.0.1:$port/restic-bench/repo
restic init >"$LOGS/s3-restic-init.log" 2>&1 || say "restic init failed"
measure restic_backup restic backup -q --host bench "${SRC[@]}"
measure restic_restore restic restore -q latest --target "$WORK/restore"
restic_ok=$(diff -rq "$DATA/go" "$WORK/restore$DATA/go" >/dev/null && cmp -s "$DATA/synthetic/random.bin" "$WORK/restore$DATA/synthetic/random.bin" && echo yes || echo NO)

mibs() { awk -v b="$src_bytes" -v s="$1" 'BEGIN { if (s+0 > 0) printf "%.0f MiB/s", b/1048576/s; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2fx", a/b; else print "-" }'; }
{
	echo
	echo "S3 ($(basename "$(dirname "$VGW")") on 127.0.0.1, one disk), $((src_bytes / 1048576)) MiB: Go tree, log, random file"
	printf '  %-16s %10s %12s %10s %12s %14s\n' "" bunker "" restic "" "restic/bunker"
	printf '  %-16s %9ss %12s %9ss %12s %14s\n' "first backup" "${T[bunker_backup]}" "$(mibs "${T[bunker_backup]}")" "${T[restic_backup]}" "$(mibs "${T[restic_backup]}")" "$(ratio "${T[restic_backup]}" "${T[bunker_backup]}")"
	printf '  %-16s %9ss %12s %9ss %12s %14s\n' "restore" "${T[bunker_restore]}" "$(mibs "${T[bunker_restore]}")" "${T[restic_restore]}" "$(mibs "${T[restic_restore]}")" "$(ratio "${T[restic_restore]}" "${T[bunker_restore]}")"
	echo "  restores identical: bunker $bunker_ok, restic $restic_ok"
} | tee -a "$BENCH_DIR/results.txt"
[[ $bunker_ok == yes && ${T[bunker_backup]} != FAIL && ${T[bunker_restore]} != FAIL ]]
