// SPDX-License-Identifier: MIT
#pragma once
/// @file leaf_dump.hpp
/// What a dump of a table's leaves is (`dump_entry`, as format_list.hpp's `dump` reports them
/// and the reference model expects them) and the level the engine places a leaf size at. Free
/// of Catch2, like reference_model.hpp, which fuzz_ops shares.
#include <cstdint>
#include <optional>
#include <ostream>

#include <iopgtable/engine/format.hpp>

namespace iopgtable::test {

/// The level at which the engine places a leaf of 2^size_lg2 bytes: the highest level in use
/// whose leaf sizes include it (nullopt when none does).
template <class F>
std::optional<unsigned> leaf_level(const geometry& g, unsigned size_lg2) {
    for (unsigned l = g.levels; l-- > 0;)
        if (((F::leaf_sizes(l) >> size_lg2) & 1) && F::item_lg2(l) <= size_lg2) return l;
    return std::nullopt;
}

/// One leaf entry of a table as `visit_all` reports it (raw widened to 64 bits).
struct dump_entry {
    std::uint64_t iova = 0;
    unsigned level = 0;
    unsigned size_lg2 = 0;
    std::uint64_t raw = 0;
    friend bool operator==(const dump_entry&, const dump_entry&) = default;
};

inline std::ostream& operator<<(std::ostream& o, const dump_entry& e) {
    return o << "{iova 0x" << std::hex << e.iova << std::dec << " level " << e.level << " size_lg2 " << e.size_lg2
             << " raw 0x" << std::hex << e.raw << std::dec << "}";
}

} // namespace iopgtable::test
