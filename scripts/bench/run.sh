#!/usr/bin/env bash
# Bunker vs restic vs borg on the same data, same disk, same run.
# See scripts/bench/README.md. Usually run as `make bench`.
#
# Environment:
#   BENCH_DIR        work dir (default: <repo>/.bench)
#   BUNKER_BIN       bunker binary (default: <repo>/bin/bunker)
#   BENCH_TOOLS      tools to run (default: "bunker restic borg")
#   BENCH_REPEAT     runs of each unchanged re-backup, restore and cp floor; the fastest is kept (default 3)
#   BENCH_FIRST_REPEAT runs of each first backup; the fastest is kept (default 5)
#   BENCH_SKIP_DATA  1 = reuse the existing dataset, never generate it
#   BENCH_SEED       dataset seed (default: 1)
set -euo pipefail

script_start=$(date +%s)
load_start=$(cut -d ' ' -f 1-3 /proc/loadavg)
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

BENCH_DIR=$(abspath "${BENCH_DIR:-$repo_root/.bench}")
BUNKER_BIN=$(abspath "${BUNKER_BIN:-$repo_root/bin/bunker}")
BENCH_TOOLS=${BENCH_TOOLS:-"bunker restic borg"}
BENCH_SKIP_DATA=${BENCH_SKIP_DATA:-0}
# REPEAT: first backups, unchanged re-backups, restores and the cp floor run this many times, best kept.
REPEAT=${BENCH_REPEAT:-3}
# The first backups get more rounds: at about 50 s a round for the three
# tools, three rounds spanned two and a half minutes, and a slow stretch of
# the shared machine that long fell on all of one tool's rounds (run by run,
# Bunker's best of three over restic's ranged from 2.30x to 2.93x).
FIRST_REPEAT=${BENCH_FIRST_REPEAT:-5}
BENCH_SEED=${BENCH_SEED:-1}

ALL_TOOLS=(bunker restic borg)
read -r -a TOOLS <<<"$BENCH_TOOLS"
for t in "${TOOLS[@]}"; do
	case $t in bunker | restic | borg) ;; *)
		echo "run.sh: unknown tool '$t' in BENCH_TOOLS (want: ${ALL_TOOLS[*]})" >&2
		exit 2
		;;
	esac
done
selected() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	echo "run.sh: $*" >&2
	exit 1
}

DATA=$BENCH_DIR/data
RESTORE=$BENCH_DIR/restore
CPDIR=$BENCH_DIR/cp-floor
LOGS=$BENCH_DIR/logs
PWFILE=$BENCH_DIR/password
MKDATA=$BENCH_DIR/mkdata
RESULTS=$BENCH_DIR/results.txt

# ---------------------------------------------------------------- setup ----

install_packages() {
	local pkgs=() sudo=()
	[[ -x /usr/bin/time ]] || pkgs+=(time)
	if selected restic && ! command -v restic >/dev/null; then pkgs+=(restic); fi
	if selected borg && ! command -v borg >/dev/null; then pkgs+=(borgbackup); fi
	((${#pkgs[@]})) || return 0
	if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then sudo=(sudo); fi
	say "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo[@]}" apt-get install -y "${pkgs[@]}"; then
		if ! { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "${pkgs[@]}"; }; then
			say "WARNING: apt-get install ${pkgs[*]} failed"
		fi
	fi
}
install_packages >&2
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install time)"
command -v go >/dev/null || die "go is needed to build scripts/bench/mkdata"

mkdir -p "$BENCH_DIR" "$LOGS"
rm -rf "$LOGS"
mkdir -p "$LOGS"
printf 'bunker-bench-password-0123456789\n' >"$PWFILE"
chmod 600 "$PWFILE"

say "building mkdata"
(cd "$repo_root" && go build -o "$MKDATA" ./scripts/bench/mkdata)

if [[ $BENCH_SKIP_DATA == 1 ]]; then
	say "reusing dataset in $DATA (BENCH_SKIP_DATA=1)"
	"$MKDATA" -out "$DATA" -seed "$BENCH_SEED" -reuse >&2
else
	say "generating dataset in $DATA (seed $BENCH_SEED)"
	"$MKDATA" -out "$DATA" -seed "$BENCH_SEED" >&2
fi

# warm_data: read the whole dataset into the page cache before a step that
# reads it. borg drops the files it reads from the cache (posix_fadvise
# DONTNEED: app.log went from 395 MiB cached to 15 MiB), so without this
# the tool after borg would read the dataset from disk.
warm_data() {
	find "$DATA" -type f -print0 | xargs -0 -r cat >/dev/null
}

say "warming the page cache"
warm_data
data_files=$(find "$DATA" -type f | wc -l)
data_bytes=$(find "$DATA" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%d", s}')

# ------------------------------------------------------------ measuring ----

declare -A RSS=()   # RSS[tool.key] = KiB
declare -A PEAK=()  # PEAK[tool] = max KiB over all the tool's commands
declare -A FAILED=() # FAILED[tool] = 1 if any command failed
declare -A VERIFY=() # VERIFY[tool] = restore verification result
declare -A SIZE=()  # SIZE[tool] = repository bytes
declare -A ROUNDS=() # ROUNDS[tool.key] = every run's seconds (or FAIL), in the order run

# measure TOOL KEY CMD...: run CMD under /usr/bin/time after a sync, with
# output appended to $LOGS/TOOL.log; record elapsed seconds and max RSS.
measure() {
	local tool=$1 key=$2
	shift 2
	local tf=$LOGS/$tool.$key.time log=$LOGS/$tool.log rc=0 secs rss
	printf '\n### %s %s: %s\n' "$(date +%T)" "$key" "$*" >>"$log"
	sync
	/usr/bin/time -o "$tf" -f '%e %M' "$@" </dev/null >>"$log" 2>&1 || rc=$?
	read -r secs rss < <(tail -n 1 "$tf" 2>/dev/null || echo "0 0") || true
	# borg exits 1 for warnings (the backup/extract itself is complete).
	if [[ $rc -eq 0 || ($tool == borg && $rc -eq 1) ]]; then
		# Repeated measurements keep every time (the table shows the
		# fastest) and the largest RSS.
		ROUNDS[$tool.$key]+="${ROUNDS[$tool.$key]:+ }$secs"
		if ((rss > ${RSS[$tool.$key]:-0})); then RSS[$tool.$key]=$rss; fi
		if ((rss > ${PEAK[$tool]:-0})); then PEAK[$tool]=$rss; fi
		say "$tool $key: ${secs}s, $((rss / 1024)) MiB max RSS"
		return 0
	else
		ROUNDS[$tool.$key]+="${ROUNDS[$tool.$key]:+ }FAIL"
		FAILED[$tool]=1
		say "$tool $key: FAILED (exit $rc), see $log"
	fi
	return "$rc"
}

export BORG_PASSPHRASE BORG_BASE_DIR=$BENCH_DIR/cache/borg
BORG_PASSPHRASE=$(cat "$PWFILE")
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_DISPLAY_PASSPHRASE=no
export RESTIC_PASSWORD_FILE=$PWFILE RESTIC_REPOSITORY=$BENCH_DIR/repo-restic
export BUNKER_PASSWORD_FILE=$PWFILE BUNKER_REPOSITORY=$BENCH_DIR/repo-bunker
BORG_REPO_DIR=$BENCH_DIR/repo-borg

restic_cache=(--cache-dir "$BENCH_DIR/cache/restic")
restic_init_flags=()
restic_backup_flags=()
restic_notes="restic defaults"
if selected restic && command -v restic >/dev/null; then
	if restic help init 2>&1 | grep -q -- '--repository-version'; then
		restic_init_flags=(--repository-version 2)
	fi
	if restic help backup 2>&1 | grep -q -- '--compression'; then
		restic_backup_flags=(--compression auto)
	fi
	restic_notes="restic: ${restic_init_flags[*]:-repository v1 (no compression)} ${restic_backup_flags[*]:-}"
fi

# run_action TOOL ACTION [N]: run the tool's ACTION (backup number N) under measure.
run_action() {
	local tool=$1 action=$2 n=${3:-}
	case $tool.$action in
	bunker.init) measure bunker init env XDG_CACHE_HOME="$BENCH_DIR/cache/bunker" "$BUNKER_BIN" init ;;
	bunker.backup) measure bunker "backup$n" env XDG_CACHE_HOME="$BENCH_DIR/cache/bunker" "$BUNKER_BIN" backup "$DATA" ;;
	bunker.restore) measure bunker restore env XDG_CACHE_HOME="$BENCH_DIR/cache/bunker" "$BUNKER_BIN" restore latest --target "$RESTORE" ;;
	bunker.check) measure bunker check env XDG_CACHE_HOME="$BENCH_DIR/cache/bunker" "$BUNKER_BIN" check --read-data ;;
	restic.init) measure restic init restic "${restic_cache[@]}" init "${restic_init_flags[@]}" ;;
	restic.backup) measure restic "backup$n" restic "${restic_cache[@]}" backup "${restic_backup_flags[@]}" "$DATA" ;;
	restic.restore) measure restic restore restic "${restic_cache[@]}" restore latest --target "$RESTORE" ;;
	restic.check) measure restic check restic "${restic_cache[@]}" check --read-data ;;
	borg.init) measure borg init borg init --encryption=repokey-blake2 "$BORG_REPO_DIR" ;;
	borg.backup) measure borg "backup$n" borg create "$BORG_REPO_DIR::snap$n${ARCHIVE_SUFFIX:-}" "$DATA" ;;
	borg.restore) measure borg restore env -C "$RESTORE" borg extract "$BORG_REPO_DIR::snap3" ;;
	borg.check) measure borg check borg check --verify-data "$BORG_REPO_DIR" ;;
	*) die "internal: no command for $tool.$action" ;;
	esac
}

repo_dir() {
	case $1 in
	bunker) echo "$BUNKER_REPOSITORY" ;;
	restic) echo "$RESTIC_REPOSITORY" ;;
	borg) echo "$BORG_REPO_DIR" ;;
	esac
}

tool_available() {
	case $1 in
	bunker) [[ -x $BUNKER_BIN ]] ;;
	restic) command -v restic >/dev/null ;;
	borg) command -v borg >/dev/null ;;
	esac
}

tool_version() {
	case $1 in
	bunker) { timeout 10 "$BUNKER_BIN" version </dev/null 2>/dev/null || timeout 10 "$BUNKER_BIN" --version </dev/null 2>/dev/null || echo unknown; } | head -n 1 ;;
	restic) restic version | head -n 1 ;;
	borg) borg --version | head -n 1 ;;
	esac
}

# tree_listing DIR: one line per regular file: CRC, size, path, then the
# file's size, mode and mtime (checksums computed 2-way parallel).
tree_listing() {
	(
		cd "$1" &&
			find . -type f -print0 | xargs -0 -r -P 2 -n 2000 cksum | LC_ALL=C sort -k 3 &&
			find . -type f -printf 'meta %p %s %m %T@\n' | LC_ALL=C sort
	)
}

# verify_restore TOOL: compare the restored tree with the (mutated) dataset.
verify_restore() {
	local tool=$1 root="" c want=$LOGS/data.listing got
	got=$LOGS/$tool.restore.listing
	for c in "$RESTORE$DATA" "$RESTORE/$(basename "$DATA")" "$RESTORE"; do
		if [[ -f $c/.complete ]]; then
			root=$c
			break
		fi
	done
	[[ -s $want ]] || tree_listing "$DATA" >"$want"
	if [[ -z $root ]]; then
		VERIFY[$tool]="NOT FOUND"
	else
		tree_listing "$root" >"$got"
		if cmp -s <(grep -v '^meta ' "$want") <(grep -v '^meta ' "$got"); then
			if cmp -s "$want" "$got"; then VERIFY[$tool]=ok; else VERIFY[$tool]=meta-diff; fi
		else
			VERIFY[$tool]=DIFFERS
		fi
		if [[ ${VERIFY[$tool]} != ok ]]; then
			{
				echo "### restore differs from the dataset (< dataset, > restored from $root):"
				diff "$want" "$got" | head -n 50
			} >>"$LOGS/$tool.log" || true
		fi
	fi
	if [[ ${VERIFY[$tool]} != ok ]]; then
		say "$tool restore verification: ${VERIFY[$tool]} (see $LOGS/$tool.log)"
	fi
	if [[ ${VERIFY[$tool]} != ok && ${VERIFY[$tool]} != meta-diff ]]; then
		FAILED[$tool]=1
	fi
}

declare -A AVAILABLE=()
for t in "${TOOLS[@]}"; do
	if tool_available "$t"; then
		AVAILABLE[$t]=1
		rm -rf "$(repo_dir "$t")" "$BENCH_DIR/cache/$t"
		mkdir -p "$BENCH_DIR/cache/$t"
	else
		say "$t is not available: every $t cell is FAIL"
		FAILED[$t]=1
	fi
done

# settle: deleting gigabytes on a file system mounted with discard slows the
# file creation that follows for a while; let it finish before a timed step.
settle() {
	sync
	sleep "${BENCH_SETTLE:-5}"
}

# The machine's speed drifts within minutes, so the tools take turns: round
# after round, each tool runs the step once, and its fastest run is kept. A
# slow stretch then falls on every tool alike instead of on whichever tool
# ran all of its repeats in it.

# Phase 1: first backup and unchanged re-backup of the pristine dataset.
# Every first backup is into a new repository and follows the deletion of
# repositories (all of them before the first round, its own before the
# others), hence the settle.
for ((rep = 1; rep <= FIRST_REPEAT; rep++)); do
	for t in "${TOOLS[@]}"; do
		[[ -n ${AVAILABLE[$t]:-} ]] || continue
		say "== $t: init, first backup (round $rep of $FIRST_REPEAT)"
		if ((rep > 1)); then
			rm -rf "$(repo_dir "$t")" "$BENCH_DIR/cache/$t"
			mkdir -p "$BENCH_DIR/cache/$t"
		fi
		if ! run_action "$t" init && ((rep == 1)); then
			unset "AVAILABLE[$t]"
			continue
		fi
		settle
		warm_data
		run_action "$t" backup 1 || true
	done
done
# The re-backup is short, so a moment of load decides it: it takes turns
# too (every repeat is again an unchanged backup on top of the last).
for ((rep = 1; rep <= REPEAT; rep++)); do
	sfx=-$rep # borg archive names must differ
	((rep > 1)) || sfx=
	for t in "${TOOLS[@]}"; do
		[[ -n ${AVAILABLE[$t]:-} ]] || continue
		ARCHIVE_SUFFIX=$sfx run_action "$t" backup 2 || true
	done
done

# Phase 2: the same small change for everyone, then backup, restore, check.
say "mutating the dataset"
"$MKDATA" -mutate "$DATA" >&2
for t in "${TOOLS[@]}"; do
	[[ -n ${AVAILABLE[$t]:-} ]] || continue
	say "== $t: backup after mutation"
	warm_data
	run_action "$t" backup 3 || true
done

# The restore floor is a plain copy of the (mutated) dataset on the same
# disk, and it takes turns with the restores. Every timed copy and restore
# follows the deletion of the tree made before it (such a deletion slows the
# file creation after it; each one adds to the next), so an untimed copy is
# made first for the first timed step to follow.
rm -rf "$CPDIR" "$RESTORE"
cp -a "$DATA" "$CPDIR"
for ((rep = 1; rep <= REPEAT; rep++)); do
	rm -rf "$CPDIR" "$RESTORE"
	settle
	say "== restore round $rep of $REPEAT"
	warm_data
	measure cp copy cp -a "$DATA" "$CPDIR" || true
	for t in "${TOOLS[@]}"; do
		[[ -n ${AVAILABLE[$t]:-} ]] || continue
		rm -rf "$CPDIR" "$RESTORE"
		mkdir -p "$RESTORE"
		settle
		if run_action "$t" restore; then
			((rep > 1)) || verify_restore "$t"
		else
			VERIFY[$t]=FAIL
		fi
	done
done
rm -rf "$CPDIR" "$RESTORE"

for t in "${TOOLS[@]}"; do
	[[ -n ${AVAILABLE[$t]:-} ]] || continue
	say "== $t: check"
	run_action "$t" check || true
	SIZE[$t]=$(du -sb "$(repo_dir "$t")" | cut -f 1)
done

# ---------------------------------------------------------------- table ----

# Cells: "-" for a tool not in BENCH_TOOLS, FAIL for a step that failed or
# never ran (e.g. after a failed init).
cell_time() { # TOOL KEY: the fastest round; FAIL if a round failed or none ran
	local v=${ROUNDS[$1.$2]:-}
	if [[ $1 != cp ]] && ! selected "$1"; then
		echo -
	elif [[ -z $v || " $v " == *" FAIL "* ]]; then
		echo FAIL
	else
		awk -v r="$v" 'BEGIN { n = split(r, x, " "); m = x[1]; for (i = 2; i <= n; i++) if (x[i] + 0 < m + 0) m = x[i]; print m }'
	fi
}
cell_mib() { # TOOL KiB -> MiB
	if ! selected "$1"; then echo -; elif [[ -z $2 ]]; then echo FAIL; else awk -v k="$2" 'BEGIN {printf "%.1f", k/1024}'; fi
}
cell_verify() { # TOOL
	if ! selected "$1"; then echo -; else echo "${VERIFY[$1]:-FAIL}"; fi
}
# ratio NUM DEN: NUM/DEN as "1.23x", or "-" if either is not a number.
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b+0 == 0) { print "-"; exit }
		printf "%.2fx", a/b }'
}

row() { printf '%-30s %10s %10s %10s %14s %12s\n' "$@"; }

time_row() { # LABEL KEY
	local b r g
	b=$(cell_time bunker "$2")
	r=$(cell_time restic "$2")
	g=$(cell_time borg "$2")
	row "$1" "$b" "$r" "$g" "$(ratio "$r" "$b")" "$(ratio "$g" "$b")"
}
# rounds_row LABEL KEY: every round's time per tool, and restic's and borg's
# time over Bunker's round by round: how near a best-of ratio is to its floor.
rounds_row() {
	local t line=$1: by_round
	for t in bunker restic borg cp; do
		[[ -n ${ROUNDS[$t.$2]:-} ]] && line+=" $t ${ROUNDS[$t.$2]};"
	done
	echo "  ${line%;}"
	for t in restic borg; do
		[[ -n ${ROUNDS[$t.$2]:-} && -n ${ROUNDS[bunker.$2]:-} ]] || continue
		by_round=$(awk -v p="${ROUNDS[$t.$2]}" -v b="${ROUNDS[bunker.$2]}" 'BEGIN {
			n = split(p, pp, " "); m = split(b, bb, " "); s = ""
			k = 0
			for (i = 1; i <= n && i <= m; i++) {
				if (pp[i] + 0 > 0 && bb[i] + 0 > 0) {
					r[++k] = pp[i] / bb[i]; s = s sprintf(" %.2fx", r[k])
				} else
					s = s " -"
			}
			# The median of the rounds, beside the best-of ratio in the table.
			for (i = 2; i <= k; i++)
				for (j = i; j > 1 && r[j - 1] > r[j]; j--) { x = r[j]; r[j] = r[j - 1]; r[j - 1] = x }
			if (k > 0)
				s = s sprintf(" (median %.2fx)", k % 2 ? r[(k + 1) / 2] : (r[k / 2] + r[k / 2 + 1]) / 2)
			print s }')
		echo "    $t/bunker by round:$by_round"
	done
}
mib_row() { # LABEL VALUES... (bunker restic borg, MiB) — ratio bunker/peer
	local b=$2 r=$3 g=$4
	row "$1" "$b" "$r" "$g" "$(ratio "$b" "$r")" "$(ratio "$b" "$g")"
}

versions=()
for t in "${TOOLS[@]}"; do
	if tool_available "$t"; then versions+=("$t: $(tool_version "$t")"); else versions+=("$t: not installed"); fi
done
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
fstype=$(df -T "$BENCH_DIR" | awk 'NR == 2 {print $2}')
elapsed=$(($(date +%s) - script_start))

{
	echo "Bunker backup benchmark -- $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "host:      $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr), $fstype at $BENCH_DIR"
	echo "load avg:  $load_start at start, $(cut -d ' ' -f 1-3 /proc/loadavg) at end (other work on the machine skews the times)"
	echo "versions:  $(printf '%s; ' "${versions[@]}" | sed 's/; $//')"
	echo "dataset:   $data_files files, $data_bytes bytes ($(awk -v b="$data_bytes" 'BEGIN {printf "%.2f GiB", b/1073741824}')), seed $BENCH_SEED:"
	echo "           Go source tree + 400 MiB random + its shifted copy + 400 MiB log + 384 MiB VM image + 24k small files"
	echo "           mutation: 20 source files modified, 3 deleted, 5 added, 1 MiB appended to the log"
	echo "settings:  bunker defaults; $restic_notes; borg: repokey-blake2, default compression (lz4)"
	echo "method:    /usr/bin/time '%e %M' per command, sync before each; first backups: best of $FIRST_REPEAT;"
	echo "           unchanged re-backups, restores and cp: best of $REPEAT;"
	echo "           the dataset is read warm from the"
	echo "           page cache for all tools equally; repos, restores and the cp copy are on the same disk"
	echo "restore floor (cp -a of the dataset, same disk): $(cell_time cp copy) s"
	echo
	echo "time ratios = peer time / bunker time (>1: bunker faster);"
	echo "size and memory ratios = bunker / peer (<1: bunker smaller)"
	echo
	row "measurement" bunker restic borg restic/bunker borg/bunker
	row "------------------------------" ---------- ---------- ---------- -------------- ------------
	time_row "first backup (s)" backup1
	time_row "unchanged re-backup (s)" backup2
	time_row "backup after mutation (s)" backup3
	time_row "full restore (s)" restore
	time_row "check, reading all data (s)" check
	mib_row "repository size (MiB)" \
		"$(cell_mib bunker "${SIZE[bunker]:+$((SIZE[bunker] / 1024))}")" \
		"$(cell_mib restic "${SIZE[restic]:+$((SIZE[restic] / 1024))}")" \
		"$(cell_mib borg "${SIZE[borg]:+$((SIZE[borg] / 1024))}")"
	mib_row "first backup max RSS (MiB)" \
		"$(cell_mib bunker "${RSS[bunker.backup1]:-}")" \
		"$(cell_mib restic "${RSS[restic.backup1]:-}")" \
		"$(cell_mib borg "${RSS[borg.backup1]:-}")"
	mib_row "peak RSS, all commands (MiB)" \
		"$(cell_mib bunker "${PEAK[bunker]:-}")" \
		"$(cell_mib restic "${PEAK[restic]:-}")" \
		"$(cell_mib borg "${PEAK[borg]:-}")"
	row "restore matches dataset" "$(cell_verify bunker)" "$(cell_verify restic)" "$(cell_verify borg)" "" ""
	echo
	echo "rounds (s), in the order run:"
	rounds_row "first backup" backup1
	rounds_row "unchanged re-backup" backup2
	rounds_row "full restore" restore
	rounds_row "cp -a floor" copy
	echo
	echo "total script runtime: ${elapsed} s; logs: $LOGS"
} | tee "$RESULTS"

if selected bunker && [[ -n ${FAILED[bunker]:-} ]]; then
	echo "run.sh: bunker failed (see $LOGS/bunker.log)" >&2
	exit 1
fi
