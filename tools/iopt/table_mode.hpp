// SPDX-License-Identifier: MIT
#pragma once
/// @file table_mode.hpp
/// `iopt --format NAME [format options] [--table-memory BYTES] < script`: build one page table
/// of a format from `all_formats` and run a script on it.
#include <cstdint>
#include <span>
#include <string>

namespace iopt {

/// Guest-physical base of the memory every table of the table mode lives in.
inline constexpr std::uint64_t table_memory_base = 0x40000000;
/// Default and largest size of that memory (`--table-memory`). The largest keeps every table
/// below 2 GiB, inside even a 32-bit output address space.
inline constexpr std::uint64_t table_memory_default = 0x1000000;
inline constexpr std::uint64_t table_memory_max = 0x40000000;

/// Runs the table mode with `args` (every word after `iopt`). Reads the script from stdin.
/// Returns the exit status: 0, 1 (malformed script line), 2 (bad options, unknown format).
int table_mode(std::span<char* const> args);

/// One line per format name of `all_formats`: the name and its formats/ folder.
std::string format_help();

} // namespace iopt
