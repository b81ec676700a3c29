// SPDX-License-Identifier: MIT
#pragma once
/// @file script.hpp
/// Reading an iopt script: one operation a line, words separated by blanks, `#` starts a
/// comment, blank lines ignored. A malformed line stops the run with `line N: <reason>` on
/// stderr (N counts every line, comments and blank ones included).
#include <array>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace iopt {

/// One operation a script may use.
struct operation {
    std::string_view name;
    std::string_view args;     ///< argument words, for messages and help (`IOVA PADDR SIZE PROT`)
    std::uint32_t arg_counts;  ///< bit n set: n arguments allowed
    std::string_view output;   ///< what it prints, for help
};

/// The operations of the table mode (`iopt --format ...`), in help order.
inline constexpr std::array<operation, 9> table_operations{{
    {"map", "IOVA PADDR SIZE PROT", 1u << 4, "ok | error name"},
    {"map_pages", "IOVA PADDR PGSIZE PGCOUNT PROT", 1u << 5, "bytes mapped | error name"},
    {"unmap", "IOVA SIZE [split]", 1u << 2 | 1u << 3, "bytes unmapped | error name"},
    {"iova", "IOVA", 1u << 1, "physical address | none"},
    {"walk", "IOVA", 1u << 1, "mapped|unmapped|fault ... | range"},
    {"dump", "[FIRST LAST]", 1u << 0 | 1u << 2, "LEAF iova size raw ... END"},
    {"regs", "", 1u << 0, "name value ... END"},
    {"stats", "", 1u << 0, "table_bytes, mapped_bytes, leaf_entries ... END"},
    {"reclaim", "", 1u << 0, "bytes of tables freed"},
}};

/// Runs one well-formed-so-far line: `op` is known and has an allowed number of `args`.
/// Returns the reason when the line is malformed after all (a bad number, a bad keyword);
/// then it must not have changed anything.
using line_handler = std::function<std::optional<std::string>(const operation& op, std::span<const std::string_view> args)>;

/// Reads `in` to its end, passing each operation line to `handle`. Returns 0, or 1 after
/// writing `line N: <reason>` to stderr for the first malformed line (unknown operation,
/// wrong number of words, or the handler's reason).
int run_script(std::istream& in, std::span<const operation> ops, const line_handler& handle);

/// Writes one output line to stdout (line-buffered: each line reaches the reader at once).
void emit(std::string_view line);

} // namespace iopt
