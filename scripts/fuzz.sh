#!/usr/bin/env bash
# Long fuzzing runs: every libFuzzer target (or the ones named) for MINUTES each, JOBS at a time
# (default 2), each from its checked-in corpus; then merges what each run found back into
# fuzz/corpus/<target>/, minimized (libFuzzer -merge=1: the smallest set of inputs, smaller
# inputs first, that keeps every feature the old corpus and the run reached). Hand-made seeds
# (any file whose name is not a 40-digit SHA-1, as make_seeds.py writes them) always stay; the
# SHA-1-named inputs are replaced by the merge's. Prints, per target:
# executions, executions per second, final coverage (cov = instrumented edges, ft = features),
# corpus before and after, and findings.
#
# Findings (crash-*, leak-*, timeout-*, oom-* inputs) are copied to fuzz/regressions/<target>/,
# which the fuzz stage of scripts/test.sh replays: a finding fails that stage until it is fixed
# (or the input removed with a reason). The script exits 1 when a run found something, 2 on a
# usage or build error.
#
# Usage: bash scripts/fuzz.sh MINUTES [TARGET...]     (TARGET: fuzz_ops, ops, ...)
# Environment: JOBS (targets at once, default 2), BUILD (build folder, default build/fuzz),
#              FUZZ_FLAGS (extra libFuzzer flags for the runs, e.g. -max_len=1024), after the
#              target's own from fuzz/run_flags.txt; CORPUS (the folder of <target>/ corpora to
#              run from and merge into, default fuzz/corpus; a <target>/ missing there starts
#              as a copy of fuzz/corpus/<target>/). A long run's corpus can outgrow what the
#              fuzz stage replays in its 30 s (fuzz/README.md, "Long runs"): CORPUS keeps it
#              outside the repository, e.g. CORPUS=$HOME/iopgtable-corpora.
# Logs, run corpora and artifacts: $BUILD/long/<target>/ (kept until the next run).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

usage() {
  echo "usage: bash scripts/fuzz.sh MINUTES [TARGET...]   (environment: JOBS, BUILD, FUZZ_FLAGS)" >&2
  exit 2
}
(($# >= 1)) || usage
minutes=$1
shift
if ! [[ $minutes =~ ^[0-9]+$ ]] || ((minutes < 1)); then
  echo "fuzz.sh: MINUTES must be a whole number, at least 1 (got '$minutes')" >&2
  usage
fi
jobs_at_once=${JOBS:-2}
if ! [[ $jobs_at_once =~ ^[0-9]+$ ]] || ((jobs_at_once < 1)); then
  echo "fuzz.sh: JOBS must be a whole number, at least 1" >&2
  exit 2
fi
build=${BUILD:-build/fuzz}
read -r -a extra_flags <<<"${FUZZ_FLAGS:-}"
seconds=$((minutes * 60))

# The same configuration as the fuzz stage of scripts/test.sh.
echo "+ building the fuzz targets in $build"
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DIOPGTABLE_BUILD_FUZZ=ON -DIOPGTABLE_FUZZ_SECONDS=0 \
  -DIOPGTABLE_BUILD_TESTS=OFF -DIOPGTABLE_BUILD_TOOLS=OFF -DIOPGTABLE_BUILD_BENCH=OFF >/dev/null || exit 2
cmake --build "$build" -j"$jobs_at_once" >/dev/null || { echo "fuzz.sh: build failed" >&2; exit 2; }

all=()
mapfile -t all < <(find "$build/fuzz" -maxdepth 1 -type f -perm -u+x -name 'fuzz_*' -printf '%f\n' | sort)
((${#all[@]} > 0)) || { echo "fuzz.sh: no fuzz targets under $build/fuzz" >&2; exit 2; }
targets=()
if (($# == 0)); then
  targets=("${all[@]}")
else
  for t in "$@"; do
    [[ $t == fuzz_* ]] || t=fuzz_$t
    if [[ ! -x $build/fuzz/$t ]]; then
      echo "fuzz.sh: unknown target '$t' (targets: ${all[*]})" >&2
      exit 2
    fi
    targets+=("$t")
  done
fi

long=$root/$build/long
corpora=${CORPUS:-$root/fuzz/corpus}
[[ $corpora == /* ]] || corpora=$root/$corpora
count_files() { find "$1" -type f 2>/dev/null | wc -l; }
size_of() { find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", (s + 1023) / 1024 }'; }
is_sha1_name() { [[ ${1##*/} =~ ^[0-9a-f]{40}$ ]]; }

# One target: fuzz for `seconds` in a scratch copy of its corpus, then merge.
run_one() {
  local t=$1 dir=$long/$1 seeds=$corpora/$1 rc=0
  rm -rf "$dir"
  if [[ ! -d $seeds && -d $root/fuzz/corpus/$t ]]; then
    mkdir -p "$seeds" && cp -r "$root/fuzz/corpus/$t/." "$seeds/"
  fi
  mkdir -p "$dir/run" "$dir/artifacts" "$seeds"
  cp -r "$seeds/." "$dir/run/"
  echo "$(count_files "$seeds") $(size_of "$seeds")" >"$dir/before"
  timeout --kill-after=30 $((seconds + seconds / 10 + 300)) \
    "$build/fuzz/$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    $(awk -v t="$t" '$1 == t { $1 = ""; print }' "$root/fuzz/run_flags.txt") \
    -artifact_prefix="$dir/artifacts/" "${extra_flags[@]}" "$dir/run" >"$dir/fuzz.log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
  # Minimized merge: an empty folder first, then the old corpus and the run's inputs.
  mkdir -p "$dir/merged"
  if "$build/fuzz/$t" -merge=1 -timeout=30 -rss_limit_mb=4096 "$dir/merged" "$seeds" "$dir/run" \
    >"$dir/merge.log" 2>&1 && (($(count_files "$dir/merged") > 0)); then
    local f hand=()
    for f in "$seeds"/*; do
      [[ -f $f ]] || continue
      if is_sha1_name "$f"; then rm -f "$f"; else hand+=("$(sha1sum <"$f" | cut -d' ' -f1)"); fi
    done
    for f in "$dir/merged"/*; do
      case " ${hand[*]} " in *" ${f##*/} "*) continue ;; esac  # a hand-made seed's copy
      cp "$f" "$seeds/"
    done
  else
    echo "merge failed: corpus left as it was (see $dir/merge.log)" >"$dir/merge-failed"
  fi
  # Findings become regression inputs.
  local f
  for f in "$dir/artifacts"/*; do
    [[ -f $f ]] || continue
    mkdir -p "$root/fuzz/regressions/$t"
    cp "$f" "$root/fuzz/regressions/$t/"
  done
}

echo "fuzz.sh: ${#targets[@]} target(s), $minutes min each, $jobs_at_once at a time: ${targets[*]}; corpora in $corpora"
start=$SECONDS
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs_at_once)); do
    wait -n || true
  done
  echo "+ $t: started $(date -u +%H:%M:%S)"
  run_one "$t" &
done
wait

found=0
printf '\n%-22s %12s %9s %8s %8s %16s %16s %s\n' target executions exec/s cov ft "corpus before" "corpus after" findings
for t in "${targets[@]}"; do
  dir=$long/$t
  log=$dir/fuzz.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  read -r before_n before_k <"$dir/before"
  after="$(count_files "$corpora/$t") / $(size_of "$corpora/$t") KiB"
  n=$(count_files "$dir/artifacts")
  rc=$(cat "$dir/rc" 2>/dev/null || echo missing)
  what=$n
  if ((n > 0)) || [[ $rc != 0 ]]; then
    found=1
    what="$n (exit $rc; see $log)"
  fi
  [[ -f $dir/merge-failed ]] && what="$what; $(cat "$dir/merge-failed")"
  printf '%-22s %12s %9s %8s %8s %16s %16s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
    "$before_n / $before_k KiB" "$after" "$what"
done
echo "fuzz.sh: done in $(((SECONDS - start) / 60)) min; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
if ((found)); then
  echo "fuzz.sh: a run found something or ended abnormally (its exit status is in the table);" \
    "findings are copied to fuzz/regressions/<target>/: fix them (the fuzz stage replays them)"
  exit 1
fi
