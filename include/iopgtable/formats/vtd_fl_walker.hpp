// SPDX-License-Identifier: MIT
#pragma once
/// @file vtd_fl_walker.hpp
/// Intel VT-d first stage, the walker half (the profile half is vtd_fl.hpp): first-stage
/// (formerly "first-level") page tables, x86-64 4-level and 5-level paging, 512 8-byte entries
/// per table, 4K pages, 2M and (with CAP.FL1GP) 1G leaves.
///
/// Spec sections followed:
/// - Intel VT-d Architecture Specification rev. 4.x/5.x, 3.6 "First-Stage Translation"
///   (4/5-level paging, canonical input addresses, A/D updates) and 9.7 "First-Stage Paging
///   Entries"; 11.4.2 capability register (FL1GP bit 56, FL5LP bit 60).
/// - Intel SDM vol. 3A, 4.5 "4-Level Paging and 5-Level Paging": P 0, R/W 1, U/S 2, PWT 3,
///   PCD 4, A 5, D 6, PS 7 (PAT in a PTE), G 8, PAT 12 in 2M/1G leaves, address 51:12, XD 63;
///   PS reserved in PML4E/PML5E; 4.8 accessed and dirty flags.
/// Where the specs leave a choice, we write what Linux writes for first-stage tables (generic_pt
/// fmt/x86_64.h, the intel driver): tables P|RW|US|A; leaves P|US|A, plus RW|D for WRITE, PS
/// above level 0; never PWT/PCD/PAT/G/XD. See formats/vtd-fl/README.md.
///
/// Only the lower canonical half is supported: input addresses are 47 bits (4-level) or 56
/// bits (5-level); an address with bit 47 (56) set is out of range. The top table is still a
/// full 4K table (hardware indexes all 512 entries), of which the lower 256 are used.
///
/// Levels, ours and the spec's:
///
/// | ours | spec entry | entry maps | leaf here |
/// |---|---|---|---|
/// | 0 | PTE | 4K | always |
/// | 1 | PDE | 2M | PS = 1 |
/// | 2 | PDPTE | 1G | PS = 1, if FL1GP |
/// | 3 | PML4E | 512G | never (PS reserved) |
/// | 4 | PML5E | 256T | never (PS reserved) |
#include <cstdint>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "x86_common.hpp"

namespace iopgtable {

/// Run-time configuration of one VT-d first-stage table.
struct vtd_fl_config {
    unsigned levels = 4;     ///< 4 (47-bit input) or 5 (56-bit input; needs CAP.FL5LP)
    unsigned oas = 52;       ///< host address width (HAW): 39..52
    bool allow_1g = true;    ///< CAP.FL1GP: 1G leaves in PDPTEs
    /// Dirty tracking: writable leaves are written with D clear so that hardware sets it on the
    /// first write (SDM 4.8). Off (default, as Linux): writable leaves are written with D set.
    bool track_dirty = false;
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};  ///< restrict page sizes (intersected)
    friend constexpr bool operator==(const vtd_fl_config&, const vtd_fl_config&) = default;
};

/// granule_lg2, bits_per_level, max_levels, min_oas/max_oas, item_lg2, index_lg2 and
/// leaf_sizes (4K, 2M, 1G; 1G needs `allow_1g`) come from vtd_radix (x86_common.hpp).
struct vtd_fl_walker : vtd_radix {
    using word = std::uint64_t;
    using config = vtd_fl_config;
    using input_address = iova_t;
    static constexpr const char* name = "vtd-fl";
    static constexpr const char* folder = "vtd-fl";  ///< formats/<folder>/

    // ---- entry fields (SDM 4.5, VT-d 9.7) ----
    using present = bit<0>;
    using writable = bit<1>;          ///< R/W
    using user = bit<2>;              ///< U/S
    using write_through = bit<3>;     ///< PWT; never set
    using cache_disable = bit<4>;     ///< PCD; never set
    using accessed = bit<5>;          ///< A
    using dirty = bit<6>;             ///< D (leaves)
    using page_size = bit<7>;         ///< PS in PDE/PDPTE; PAT in a PTE (never set)
    using global = bit<8>;            ///< G; never set
    using pat_large = bit<12>;        ///< PAT of a 2M/1G leaf; never set
    using execute_disable = bit<63>;  ///< XD; never set (execute requests are deprecated)
    static constexpr word address_mask = bit_range(max_oas - 1, granule_lg2);

    /// Bits of input address of a table with `levels` levels: the lower canonical half only.
    static constexpr unsigned input_bits(unsigned levels) noexcept { return item_lg2(levels - 1) + bits_per_level - 1; }

    // ---- geometry (3.6) ----
    /// Refused (errc::invalid): levels not 4 or 5; oas outside 39..52; a page-size restriction
    /// that leaves no size.
    static constexpr result<geometry> make_geometry(const config& c) noexcept {
        if (c.levels != 4 && c.levels != 5) return failure(errc::invalid);
        if (c.oas < min_oas || c.oas > max_oas) return failure(errc::invalid);
        std::uint64_t sizes = leaf_sizes(0) | leaf_sizes(1);
        if (c.allow_1g) sizes |= leaf_sizes(2);
        sizes &= c.pgsize_bitmap;
        if (sizes == 0) return failure(errc::invalid);
        return geometry{c.levels, bits_per_level, input_bits(c.levels), c.oas, sizes};
    }

    // ---- entries ----
    /// P clear → empty. PTE → leaf (bit 7 there is PAT). PS set: a leaf in a PDE, and in a
    /// PDPTE if 1G pages are allowed (otherwise reserved → empty); PS in PML4E/PML5E is
    /// reserved → empty. Otherwise a table.
    static constexpr entry_kind classify(const config& c, unsigned level, word raw) noexcept {
        if (!present::test(raw)) return entry_kind::empty;
        if (level == 0) return entry_kind::leaf;
        if (!page_size::test(raw)) return entry_kind::table;
        return level == 1 || (level == 2 && c.allow_1g) ? entry_kind::leaf : entry_kind::empty;
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word) noexcept { return item_lg2(level); }
    /// Address bits 51:12 (bits above HAW are reserved; they are not checked here).
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept { return raw & address_mask; }
    /// Address bits 51:(leaf size); bit 12 of a 2M/1G leaf is PAT and never part of it.
    static constexpr std::uint64_t leaf_address(const config&, unsigned level, word raw) noexcept {
        return raw & bit_range(max_oas - 1, item_lg2(level));
    }
    /// P|RW|US|A|address, as Linux: the leaf alone decides the permissions.
    static constexpr word make_table(const config&, unsigned, std::uint64_t pa) noexcept {
        return (pa & address_mask) | present::mask | writable::mask | user::mask | accessed::mask;
    }
    /// address | P | US | A, plus RW (and D unless tracking dirty state) for WRITE, PS at level
    /// ≥ 1. Present implies readable, so a WRITE-only prot maps read/write. CACHE, NOEXEC, MMIO
    /// and PRIV are ignored, as Linux does (no XD: the VT-d spec deprecated execute requests).
    static constexpr word make_leaf(const config& c, unsigned level, unsigned, std::uint64_t oa, prot p) noexcept {
        word w = (oa & address_mask) | present::mask | user::mask | accessed::mask;
        if (has(p, prot::write)) {
            w |= writable::mask;
            if (!c.track_dirty) w |= dirty::mask;
        }
        if (level > 0) w |= page_size::mask;
        return w;
    }
    /// READ always (a present leaf is readable), WRITE from R/W.
    static constexpr prot leaf_prot(const config&, unsigned, word raw) noexcept {
        return writable::test(raw) ? prot::read | prot::write : prot::read;
    }
    /// Every prot with READ or WRITE is accepted (the engine refuses the others).
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }

    // ---- dirty state (3.6, SDM 4.8): only with track_dirty ----
    static constexpr bool dirty_tracking(const config& c) noexcept { return c.track_dirty; }
    static constexpr bool leaf_dirty(const config&, unsigned, word raw) noexcept { return dirty::test(raw); }
    static constexpr word leaf_clean(const config&, unsigned, word raw) noexcept { return dirty::clear(raw); }
    /// What hardware does on a write: A and D set.
    static constexpr word leaf_set_dirty(const config&, unsigned, word raw) noexcept {
        return raw | dirty::mask | accessed::mask;
    }
};

static_assert(page_table_format<vtd_fl_walker> && has_dirty_tracking<vtd_fl_walker>);

} // namespace iopgtable
