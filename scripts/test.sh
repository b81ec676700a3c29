#!/usr/bin/env bash
# Every test, in four stages (each in its own build directory under build/):
#   release     Release build of everything; the whole ctest suite
#   asan-ubsan  clang -O0 (g++ -O1 without clang), -DIOPGTABLE_SANITIZE=address,undefined; the ctest suite without the packaging
#               checks (build-only checks, run in release), halting on errors; rapidcheck properties run 30 cases
#               each (RC_PARAMS max_success=30; release runs rapidcheck's default 100) and the page-by-page
#               translation checks sample at most 2^12 pages per mapping (tests/support/checks.hpp)
#   tsan        -DIOPGTABLE_SANITIZE=thread; the ctest tests labelled `concurrency`
#   fuzz        clang, -DIOPGTABLE_BUILD_FUZZ=ON; every fuzz_* for FUZZ_SECONDS (default 30) s
# A stage that finds nothing to run fails. Prints one line per stage with its time, then
# `N passed, M failed` counting stages; exits non-zero when any stage failed.
#
# Usage: bash scripts/test.sh [stage...]     (default: all four, in the order above)
# Environment: FUZZ_SECONDS (per fuzzer, default 30), JOBS (parallel jobs, default 2).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

parallel=${JOBS:-2}
fuzz_seconds=${FUZZ_SECONDS:-30}
if ! [[ $fuzz_seconds =~ ^[0-9]+$ ]] || ((fuzz_seconds < 1)); then
  echo "test.sh: FUZZ_SECONDS must be a whole number of seconds, at least 1" >&2
  exit 2
fi
all_stages=(release asan-ubsan tsan fuzz)
if (($# > 0)); then
  stages=("$@")
else
  stages=("${all_stages[@]}")
fi
for stage in "${stages[@]}"; do
  case " ${all_stages[*]} " in
    *" $stage "*) ;;
    *) echo "test.sh: unknown stage '$stage' (stages: ${all_stages[*]})" >&2; exit 2 ;;
  esac
done

# Sanitizer builds: -O1 (the usual speed/compile-time balance for ASan; -O2 -g made the
# test build three times slower), line tables for stack traces, asserts on (no NDEBUG).
sanitizer_build=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1")
# The ASan + UBSan stage: clang at -O0 when clang++ is there (scripts/deps.sh installs it for
# the fuzz stage), else g++ at -O1. Measured on the 2-core machine (2026-12-04): g++ -O1 took
# 199 s to compile the heaviest test file with both sanitizers, clang -O1 107 s, clang -O0
# 28 s; the stage went from 17.5 min of building + 3.8 min of tests (g++ -O1) to about 5 + 7
# (clang -O0). The test build also then sees a second compiler's diagnostics.
if command -v clang++ >/dev/null 2>&1; then
  asan_compiler=clang++
  asan_build=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1")
else
  asan_compiler=c++
  asan_build=("${sanitizer_build[@]}")
fi

# Prints and runs a command.
step() {
  echo "+ $*"
  "$@"
}

banner() {
  echo
  echo "==================== $* ===================="
}

duration() {
  printf '%dm%02ds' $(($1 / 60)) $(($1 % 60))
}

# Sets cpu_now to the CPU seconds (user + system) this shell's finished children have used.
# `times` must run in this shell, not in a $(...) subshell: hence the file and the variable.
times_file=$(mktemp "${TMPDIR:-/tmp}/iopgtable-times.XXXXXX")
trap 'rm -f "$times_file"' EXIT
cpu_now=0
children_cpu() {
  times >"$times_file"
  cpu_now=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] } printf "%d\n", t }' "$times_file")
}

# ctest with the settings every stage uses; extra arguments are passed on.
run_ctest() {
  local dir=$1
  shift
  step ctest --test-dir "$dir" -j"$parallel" --output-on-failure --no-tests=error --timeout 1200 "$@"
}

# The release stage builds at -O2 (CMake's Release default is -O3, which a user's own Release
# build keeps): with ten formats instantiated in every test file the stage took 13 min of the
# test command's 31 on the 2-core machine (2026-12-05), and -O2 compiles the heaviest test
# file about 14% faster. The price: warnings only -O3's inlining provokes are not seen here.
# The test programs build at -O1 (IOPGTABLE_TEST_OPTIMIZATION, tests/CMakeLists.txt), and so do
# iopt and the benchmarks (IOPGTABLE_TOOLS_OPTIMIZATION): here they are built to be tested, not
# timed, and they are most of the stage's compile time; the library code they run is still
# optimized, with NDEBUG; the consumer projects keep -O2. Measured on the 2-core machine
# (2026-12-05, g++ 12, twelve formats): tests/engine/conformance_errors.cpp compiles in 41.2 s
# at -O2, 26.9 s at -O1; iopt and the benchmarks took 7 of the stage's 12 build minutes at -O2.
# Hence the stage's own build directory, build/test-release: build/release (scripts/demo.sh,
# the README's benchmark commands) keeps the tools' usual optimization, so that neither the
# demo's nor the benchmarks' timings come from a test build.
# Both this stage and asan-ubsan compile the test program's files in unity groups
# (IOPGTABLE_TEST_UNITY, tests/CMakeLists.txt): the files of a group share one compilation.
stage_release() {
  local dir=build/test-release
  step cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" \
    -DIOPGTABLE_TEST_OPTIMIZATION=-O1 -DIOPGTABLE_TOOLS_OPTIMIZATION=-O1 -DIOPGTABLE_TEST_UNITY=ON || return 1
  step cmake --build "$dir" -j"$parallel" || return 1
  run_ctest "$dir"
}

stage_asan-ubsan() {
  local dir=build/asan
  # A build directory configured with the other compiler is started afresh (CMake cannot
  # switch compilers in an existing cache).
  if [[ -f $dir/CMakeCache.txt ]] && ! grep -q "^CMAKE_CXX_COMPILER:[A-Z]*=.*/\?${asan_compiler}\$" "$dir/CMakeCache.txt"; then
    step rm -rf "$dir"
  fi
  step cmake -S . -B "$dir" "${asan_build[@]}" \
    -DIOPGTABLE_SANITIZE=address,undefined -DIOPGTABLE_BUILD_BENCH=OFF -DIOPGTABLE_PACKAGING_TESTS=OFF \
    -DIOPGTABLE_TEST_UNITY=ON || return 1
  step cmake --build "$dir" -j"$parallel" || return 1
  # Fewer property cases here than in release: at -O0 with both sanitizers the two model
  # properties took 250 of the stage's 670 CPU seconds of tests at 100 cases each (2026-12-04).
  # A seed or other parameters given in RC_PARAMS are kept.
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:check_initialization_order=1:strict_init_order=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  RC_PARAMS="max_success=30${RC_PARAMS:+ $RC_PARAMS}" \
    run_ctest "$dir"
}

stage_tsan() {
  local dir=build/tsan
  step cmake -S . -B "$dir" "${sanitizer_build[@]}" -DIOPGTABLE_SANITIZE=thread \
    -DIOPGTABLE_BUILD_TOOLS=OFF -DIOPGTABLE_BUILD_BENCH=OFF -DIOPGTABLE_PACKAGING_TESTS=OFF || return 1
  # Build only the programs the `concurrency` tests run (target name = program name); anything
  # else (a test running a script) means building everything.
  local programs=() targets=() program everything=0
  mapfile -t programs < <(cmake -DBUILD_DIR="$dir" -DLABEL=concurrency -P cmake/label_programs.cmake)
  if ((${#programs[@]} == 0)); then
    echo "tsan: FAILURE: no ctest test is labelled concurrency"
    return 1
  fi
  for program in "${programs[@]}"; do
    if [[ $program == "$root/$dir/"* ]]; then
      targets+=("$(basename "$program")")
    else
      everything=1
    fi
  done
  if ((everything)) || ! step cmake --build "$dir" -j"$parallel" --target "${targets[@]}"; then
    step cmake --build "$dir" -j"$parallel" || return 1
  fi
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    run_ctest "$dir" -L concurrency
}

# Runs one fuzzer for fuzz_seconds on a scratch copy of its seed corpus (fuzz/corpus/<name>/,
# if any), with its own flags from fuzz/run_flags.txt; writes <logs>/<name>.log and
# <logs>/<name>.rc. Crashing inputs go to <artifacts>/.
run_fuzzer() {
  local binary=$1 logs=$2 artifacts=$3 name corpus rc=0
  name=$(basename "$binary")
  corpus=$(mktemp -d "${TMPDIR:-/tmp}/iopgtable-corpus-$name.XXXXXX")
  if [[ -d fuzz/corpus/$name ]]; then
    cp -r "fuzz/corpus/$name/." "$corpus/"
  fi
  # libFuzzer stops itself after -max_total_time; `timeout` only guards against a stuck run.
  timeout --kill-after=10 $((fuzz_seconds * 2 + 120)) \
    "$binary" -max_total_time="$fuzz_seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    $(awk -v t="$name" '$1 == t { $1 = ""; print }' fuzz/run_flags.txt) \
    -artifact_prefix="$artifacts/$name-" "$corpus" >"$logs/$name.log" 2>&1 || rc=$?
  rm -rf "$corpus"
  echo "$rc" >"$logs/$name.rc"
}

stage_fuzz() {
  local dir=build/fuzz
  local logs=$root/$dir/fuzz-logs artifacts=$root/$dir/fuzz/artifacts
  # IOPGTABLE_FUZZ_SECONDS=0: fuzz/'s own timed ctest runs are off, the loop below does them.
  step cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DIOPGTABLE_BUILD_FUZZ=ON -DIOPGTABLE_FUZZ_SECONDS=0 \
    -DIOPGTABLE_BUILD_TESTS=OFF -DIOPGTABLE_BUILD_TOOLS=OFF -DIOPGTABLE_BUILD_BENCH=OFF || return 1
  step cmake --build "$dir" -j"$parallel" || return 1

  local fuzzers=()
  if [[ -d $dir/fuzz ]]; then
    mapfile -t fuzzers < <(find "$dir/fuzz" -type f -perm -u+x -name 'fuzz_*' -not -path '*/CMakeFiles/*' | sort)
  fi
  if ((${#fuzzers[@]} == 0)); then
    echo "fuzz: FAILURE: no fuzz targets found (expected executables fuzz_* under $dir/fuzz/)"
    return 1
  fi

  # Replays of the seed corpora and saved regressions that fuzz/ registers with ctest (in its
  # own folder: the top level has no tests in this configuration), if any.
  run_ctest "$dir/fuzz" --no-tests=ignore || return 1

  rm -rf "$logs"
  mkdir -p "$logs" "$artifacts"
  echo "fuzz: running ${#fuzzers[@]} fuzzers for ${fuzz_seconds} s each, $parallel at a time"
  local binary
  for binary in "${fuzzers[@]}"; do
    while (($(jobs -rp | wc -l) >= parallel)); do
      wait -n || true
    done
    run_fuzzer "$binary" "$logs" "$artifacts" &
  done
  wait

  local failed=0 name rc runs
  for binary in "${fuzzers[@]}"; do
    name=$(basename "$binary")
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo missing)
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$logs/$name.log" | tail -n 1)
    if [[ $rc == 0 ]]; then
      echo "fuzz: $name: ok (${runs:-?} runs in ${fuzz_seconds} s: $(( ${runs:-0} / fuzz_seconds )) per second)"
    else
      failed=1
      echo "fuzz: $name: FAILED (exit $rc); log $logs/$name.log, last lines:"
      tail -n 40 "$logs/$name.log" | sed 's/^/    /'
    fi
  done
  return "$failed"
}

total_start=$SECONDS
banner deps
if ! bash scripts/deps.sh; then
  echo "deps: FAILED"
  echo "0 passed, ${#stages[@]} failed"
  exit 1
fi

passed=0
failed=0
summary=()
for stage in "${stages[@]}"; do
  banner "stage $stage"
  start=$SECONDS
  children_cpu
  cpu_start=$cpu_now
  "stage_$stage"
  rc=$?
  children_cpu
  took="$(duration $((SECONDS - start))), cpu $(duration $((cpu_now - cpu_start)))"
  if ((rc == 0)); then
    passed=$((passed + 1))
    line="stage $stage: PASS ($took)"
  else
    failed=$((failed + 1))
    line="stage $stage: FAIL ($took)"
  fi
  echo "$line"
  summary+=("$line")
done

banner summary
printf '%s\n' "${summary[@]}"
children_cpu
echo "total: $(duration $((SECONDS - total_start))), cpu $(duration "$cpu_now") (wall and CPU time; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "$passed passed, $failed failed"
((failed == 0))
