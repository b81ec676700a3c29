// SPDX-License-Identifier: MIT
#pragma once
/// @file x86_common.hpp
/// The radix geometry the three x86 IOMMU walkers share (vtd_fl_walker.hpp, vtd_sl_walker.hpp,
/// amd_v1_walker.hpp): every table is 4 KiB of 512 8-byte entries, 9 index bits a level, so an
/// entry at our level n maps 2^(12 + 9n) bytes. Spec sections followed: Intel VT-d 3.6
/// "First-Stage Translation" and 3.7 "Second-Stage Translation" (9 bits per level); Intel SDM
/// vol. 3A, 4.5 "4-Level Paging and 5-Level Paging"; AMD IOMMU (#48882) 2.2.3 "I/O Page Tables
/// for Host Translations" (9 index bits per level).
#include <cstdint>

#include "../core/bits.hpp"

namespace iopgtable {

/// Granule and level stride of VT-d first and second stage and AMD-Vi v1; their walkers derive from it.
struct x86_radix_4k {
    static constexpr unsigned granule_lg2 = 12;
    static constexpr unsigned bits_per_level = 9;

    /// Bytes (log2) one entry at `level` maps: 4K, 2M, 1G, 512G, 256T (VT-d's top), 2^57 (AMD's top).
    static constexpr unsigned item_lg2(unsigned level) noexcept { return granule_lg2 + level * bits_per_level; }
    /// Every table is 4 KiB of 8-byte entries (a 6-level AMD table's top one uses 128 of them).
    static constexpr unsigned index_lg2(unsigned) noexcept { return bits_per_level; }
};

/// What both VT-d stages add (3.6, 3.7): at most 5 levels, a host address width (HAW) of 39..52.
struct vtd_radix : x86_radix_4k {
    static constexpr unsigned max_levels = 5;
    static constexpr unsigned min_oas = 39, max_oas = 52;

    /// 4K at level 0, 2M at level 1, 1G at level 2, none above; whether a table may use 2M and
    /// 1G is its config's (vtd_fl: `allow_1g`; vtd_sl: `superpage_allowed`).
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        return level <= 2 ? lg2_to_size(item_lg2(level)) : 0;
    }
};

} // namespace iopgtable
