#!/usr/bin/env bash
# The main demo: installs what is missing, builds the iopt command (Release, only that
# target) and runs `iopt demo`: a simulated VM whose guest drives the virtio-iommu device
# (tools/iopt/README.md, "The virtio-iommu device").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/deps.sh

# A Release build of the tools at their usual optimization (scripts/test.sh builds its own,
# build/test-release, with the tools at -O1: the demo prints timings).
build=build/release
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target iopt

# The path CMake recorded (iopgtable-tools.txt, from the root CMakeLists.txt); else search.
iopt=
if [[ -f $build/iopgtable-tools.txt ]]; then
  iopt=$(sed -n 's/^iopt=//p' "$build/iopgtable-tools.txt")
fi
if [[ -z $iopt || ! -x $iopt ]]; then
  iopt=$(find "$build" -type f -name iopt -perm -u+x -print -quit)
fi
if [[ -z $iopt || ! -x $iopt ]]; then
  echo "demo: the iopt binary was not found under $build" >&2
  exit 1
fi

echo
echo "\$ iopt demo"
"$iopt" demo
