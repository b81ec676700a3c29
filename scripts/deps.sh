#!/usr/bin/env bash
# Installs the Debian 12 packages iopgtable needs to build, test, benchmark and fuzz, and only
# those that are missing: when every package is installed it does not touch apt (works offline).
# Uses sudo when not root; never asks questions.
# Usage: bash scripts/deps.sh [EXTRA-PACKAGE...]
set -euo pipefail

packages=(
  cmake make g++          # build; g++ 12 brings ASan/UBSan/TSan runtimes
  clang libclang-rt-14-dev  # clang 14; libFuzzer and clang's sanitizer runtimes are in libclang-rt-14-dev
  catch2 librapidcheck-dev  # tests
  libboost-dev            # Boost.Hana, the library's one dependency
  libbenchmark-dev        # benchmarks
)
# Extra packages a script needs besides these (scripts/coverage.sh: llvm-14).
packages+=("$@")

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$package")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "deps: all ${#packages[@]} packages installed"
  exit 0
fi

echo "deps: installing ${missing[*]}"
as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo)
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
