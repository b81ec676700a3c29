#!/usr/bin/env bash
# Line coverage of include/iopgtable/ by the tests and the fuzz corpora, with clang's
# source-based coverage (-fprofile-instr-generate -fcoverage-mapping; llvm-profdata and llvm-cov
# from Debian's llvm-14, installed when missing).
#
# Builds everything but the benchmarks into build/coverage (clang, -O1, no sanitizers; the fuzz
# targets with libFuzzer only), runs the whole ctest suite there (unit, property, conformance,
# the iopt golden cases, the consumers) and the replays of every fuzz corpus and saved
# regression (the fuzz_<t>_seeds and fuzz_<t>_regressions tests: no new fuzzing), then writes
#   build/coverage/html/index.html   the annotated sources;
#   build/coverage/coverage.md       per header: lines, lines missed, line coverage (Markdown);
#   build/coverage/uncovered.txt     per header, the line ranges nothing reached;
#   build/coverage/instantiated_only.txt  lines llvm-cov's merged view shows as not run that
#                                    an instantiation view shows run (counted as run).
# and prints the table. Code of templates that nothing instantiates has no coverage mapping, so
# it is neither counted nor shown. Exits non-zero when the build or a test fails (the report is
# still written when tests ran).
#
# Usage: bash scripts/coverage.sh        Environment: JOBS (default 2)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
jobs=${JOBS:-2}
dir=build/coverage

bash scripts/deps.sh llvm-14 || exit 2
profdata=$(command -v llvm-profdata-14 || command -v llvm-profdata)
cov=$(command -v llvm-cov-14 || command -v llvm-cov)
[[ -n $profdata && -n $cov ]] || { echo "coverage.sh: llvm-profdata / llvm-cov not found" >&2; exit 2; }

flags="-fprofile-instr-generate -fcoverage-mapping"
echo "+ configuring and building $dir"
cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Coverage \
  "-DCMAKE_CXX_FLAGS_COVERAGE=-O1 -g0 $flags" "-DCMAKE_EXE_LINKER_FLAGS_COVERAGE=$flags" \
  -DIOPGTABLE_BUILD_TESTS=ON -DIOPGTABLE_BUILD_TOOLS=ON -DIOPGTABLE_BUILD_BENCH=OFF \
  -DIOPGTABLE_BUILD_FUZZ=ON -DIOPGTABLE_FUZZ_SECONDS=0 "-DIOPGTABLE_FUZZ_SANITIZE=" >/dev/null || exit 2
cmake --build "$dir" -j"$jobs" >"$dir/build.log" 2>&1 || { tail -n 30 "$dir/build.log"; echo "coverage.sh: build failed" >&2; exit 2; }

profiles=$root/$dir/profiles
rm -rf "$profiles" "$dir/html"
mkdir -p "$profiles"
echo "+ running the tests and the corpus replays (profiles in $profiles)"
status=0
LLVM_PROFILE_FILE="$profiles/%p-%m.profraw" \
  ctest --test-dir "$dir" -j"$jobs" --timeout 3600 --output-on-failure >"$dir/ctest.log" 2>&1 || status=1
tail -n 3 "$dir/ctest.log"
# The fuzz replays are registered in fuzz/'s own folder when the top level has tests too.
if ! grep -q "fuzz_.*_seeds" "$dir/ctest.log"; then
  LLVM_PROFILE_FILE="$profiles/%p-%m.profraw" \
    ctest --test-dir "$dir/fuzz" -j"$jobs" --timeout 3600 --output-on-failure >>"$dir/ctest.log" 2>&1 || status=1
fi

"$profdata" merge -sparse "$profiles"/*.profraw -o "$dir/all.profdata" || exit 2
objects=()
while IFS= read -r f; do
  # Only programs that wrote a profile carry coverage mapping worth reading.
  objects+=(-object "$f")
done < <(find "$dir" -type f -perm -u+x -not -path '*/CMakeFiles/*' -not -name '*.sh' \
  -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print | sort)
((${#objects[@]} > 0)) || { echo "coverage.sh: no programs found" >&2; exit 2; }
# `-object` needs a first positional binary: the first one found.
first=${objects[1]}
rest=("${objects[@]:2}")
# Only the library's headers: tests, harnesses, tools and system headers are left out. Paths are
# as the compiler saw them (<build folder>/../../../include/...), so the pattern looks at the
# end of the path only.
only_library=(-ignore-filename-regex='(/tests/([^/.][^/]*/)*[^/]+|/fuzz/[^/]+|/tools/iopt/[^/]+|/bench/[^/]+)$|^/usr/')

"$cov" show "$first" "${rest[@]}" -instr-profile="$dir/all.profdata" -format=html \
  -output-dir="$dir/html" -show-line-counts-or-regions "${only_library[@]}" >/dev/null || exit 2
"$cov" export "$first" "${rest[@]}" -instr-profile="$dir/all.profdata" -format=lcov "${only_library[@]}" \
  >"$dir/coverage.lcov" || exit 2

# Per header from the lcov lines (DA:line,count), merged over all programs: a line is covered
# when any program ran it.
python3 - "$root" "$dir" <<'EOF'
import collections, os, sys
root, out = sys.argv[1], sys.argv[2]
hits = collections.defaultdict(dict)
current = None
for line in open(os.path.join(out, "coverage.lcov")):
    line = line.strip()
    if line.startswith("SF:"):
        current = os.path.relpath(line[3:], root)
        if not current.startswith("include/iopgtable/"):
            current = None
    elif line.startswith("DA:") and current:
        n, count = line[3:].split(",")[:2]
        n, count = int(n), int(count)
        hits[current][n] = max(hits[current].get(n, 0), count)
# The lcov lines are llvm-cov's merged view of each file. For templates, clang 14's merged view
# shows some lines as never run that the per-instantiation views show run: lines in or after an
# `if constexpr` branch that one instantiation discards (engine/walk.hpp's level-0 branches,
# page_table.hpp's per-level steps). Those lines are read back from the HTML report's
# instantiation views and counted as run; instantiated_only.txt lists them.
import re
row = re.compile(r"<tr><td class='line-number'><a name='L(\d+)'.*?</td><td class='(\w+)-line'>")
def run_in_an_instantiation(f):
    page = os.path.join(out, "html", "coverage", os.path.abspath(os.path.join(root, f)).lstrip("/") + ".html")
    if not os.path.exists(page):
        return set()
    seen, runs = set(), set()
    for m in row.finditer(open(page, encoding="utf-8", errors="replace").read()):
        n = int(m.group(1))
        if n in seen and m.group(2) == "covered":  # a second row of a line: an instantiation view
            runs.add(n)
        seen.add(n)
    return runs
def ranges_of(numbers):
    ranges, start, prev = [], numbers[0], numbers[0]
    for n in numbers[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(ranges)
rows, total, missed_total, merged_total = [], 0, 0, 0
with open(os.path.join(out, "uncovered.txt"), "w") as unc, open(os.path.join(out, "instantiated_only.txt"), "w") as inst:
    for f in sorted(hits):
        lines = hits[f]
        merged_missed = sorted(n for n, c in lines.items() if c == 0)
        ran = run_in_an_instantiation(f) if merged_missed else set()
        missed = [n for n in merged_missed if n not in ran]
        only = [n for n in merged_missed if n in ran]
        total += len(lines); missed_total += len(missed); merged_total += len(merged_missed)
        rows.append((f, len(lines), len(missed), len(merged_missed)))
        if missed:
            unc.write(f"{f}: {ranges_of(missed)}\n")
        if only:
            inst.write(f"{f}: {ranges_of(only)}\n")
def pct(l, m):
    return 100.0 * (l - m) / l if l else 100.0
with open(os.path.join(out, "coverage.md"), "w") as md:
    md.write("| header | lines | missed | line coverage | missed in the merged view |\n|---|---:|---:|---:|---:|\n")
    for f, l, m, mm in rows:
        md.write(f"| `{f.replace('include/iopgtable/', '')}` | {l} | {m} | {pct(l, m):.1f}% | {mm} |\n")
    md.write(f"| **all of include/iopgtable/** | {total} | {missed_total} | {pct(total, missed_total):.1f}% | {merged_total} |\n")
print(open(os.path.join(out, "coverage.md")).read())
EOF
echo "coverage.sh: report $dir/html/index.html, table $dir/coverage.md, gaps $dir/uncovered.txt"
if ((status != 0)); then
  echo "coverage.sh: some tests failed (see $dir/ctest.log)"
fi
exit "$status"
