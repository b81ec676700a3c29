// SPDX-License-Identifier: MIT
#pragma once
/// @file vtd_sl_walker.hpp
/// Intel VT-d second stage, the walker half (the profile half is vtd_sl.hpp): second-stage
/// (formerly "second-level") page tables, 3, 4 or 5 levels of 512 8-byte entries, 4K pages and
/// 2M/1G superpages, no present bit (an entry is present iff R or W is set). The table of a
/// stage-2 (guest-physical) address space, so its input is an IPA.
///
/// Spec sections followed (Intel VT-d Architecture Specification, rev. 4.x/5.x):
/// - 3.7 "Second-Stage Translation": AGAW 39/48/57 → 3/4/5 levels, 9 bits per level, superpage
///   leaves at the SS-PDE (2M) and SS-PDPE (1G) when PS = 1; 3.7.1 access rights (R/W at
///   every level, the leaf decides since tables carry R|W); second-stage A/D (SSADE).
/// - 9.8 "Second-Stage Paging Entries": R 0, W 1, X 2, EMT 5:3, IPAT 6, PS 7, A 8, D 9, SNP 11,
///   address (HAW-1):12, TM 62; PS reserved in SS-PML4E/SS-PML5E.
/// - 11.4.2 capability register: SLLPS (bit 34 = 2M, bit 35 = 1G), the superpages a table may use.
/// Where the spec leaves a choice, we write what Linux writes (generic_pt fmt/vtdss.h and the
/// older intel driver): tables R|W|address; leaves address|R|W|SNP|PS, never X/EMT/IPAT/TM/A/D.
/// See formats/vtd-sl/README.md.
///
/// Levels, ours and the spec's:
///
/// | ours | spec entry | entry maps | leaf here |
/// |---|---|---|---|
/// | 0 | SS-PTE | 4K | always |
/// | 1 | SS-PDE | 2M | PS = 1, if SLLPS bit 0 |
/// | 2 | SS-PDPE | 1G | PS = 1, if SLLPS bit 1 |
/// | 3 | SS-PML4E | 512G | never (PS reserved) |
/// | 4 | SS-PML5E | 256T | never (PS reserved) |
#include <cstdint>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "x86_common.hpp"

namespace iopgtable {

/// CAP.SLLPS bits (capability register bits 35:34), as `vtd_sl_config::sllps` holds them.
namespace vtd_sllps {
inline constexpr unsigned size_2m = 1u << 0;  ///< CAP bit 34: 2 MiB superpages
inline constexpr unsigned size_1g = 1u << 1;  ///< CAP bit 35: 1 GiB superpages
} // namespace vtd_sllps

/// Run-time configuration of one VT-d second-stage table.
struct vtd_sl_config {
    unsigned aw = 48;        ///< adjusted guest address width: 39, 48 or 57 (3, 4, 5 levels)
    unsigned sllps = vtd_sllps::size_2m | vtd_sllps::size_1g;  ///< superpages allowed: 0, 2M, or 2M+1G
    bool snoop = false;      ///< force snooping: SNP in every leaf (Linux FORCE_COHERENCE; needs ECAP.SC)
    unsigned oas = 52;       ///< host address width (HAW): 39..52
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};  ///< restrict page sizes (intersected)
    friend constexpr bool operator==(const vtd_sl_config&, const vtd_sl_config&) = default;
};

/// granule_lg2, bits_per_level, max_levels, min_oas/max_oas, item_lg2, index_lg2 and
/// leaf_sizes (4K, 2M, 1G; whether this table may use them is `superpage_allowed`) come from
/// vtd_radix (x86_common.hpp).
struct vtd_sl_walker : vtd_radix {
    using word = std::uint64_t;
    using config = vtd_sl_config;
    using input_address = ipa_t;
    static constexpr const char* name = "vtd-sl";
    static constexpr const char* folder = "vtd-sl";  ///< formats/<folder>/

    // ---- entry fields (9.8) ----
    using read_bit = bit<0>;
    using write_bit = bit<1>;
    using exec_bit = bit<2>;              ///< X: execute requests only; never set
    using page_size = bit<7>;             ///< PS: SS-PDE/SS-PDPE is a 2M/1G leaf
    using accessed = bit<8>;              ///< A (second-stage A/D enabled by SSADE)
    using dirty = bit<9>;                 ///< D (leaves)
    using snoop_bit = bit<11>;            ///< SNP: force snooped access
    static constexpr word address_mask = bit_range(max_oas - 1, granule_lg2);
    static constexpr word present_mask = read_bit::mask | write_bit::mask;

    /// Levels for an address width, 0 when it is none of 39/48/57.
    static constexpr unsigned levels_for_aw(unsigned aw) noexcept {
        return aw == 39 ? 3 : aw == 48 ? 4 : aw == 57 ? 5 : 0;
    }

    /// Whether the capability mask of `c` lets `level` hold a superpage leaf.
    static constexpr bool superpage_allowed(const config& c, unsigned level) noexcept {
        return (level == 1 && (c.sllps & vtd_sllps::size_2m)) || (level == 2 && (c.sllps & vtd_sllps::size_1g));
    }

    // ---- geometry (3.7) ----
    /// Refused (errc::invalid): aw not 39/48/57; sllps not 0, 1 or 3 (1G without 2M is not
    /// accepted: a 1G split must be able to write 2M leaves); oas outside 39..52; a page-size
    /// restriction that leaves no size.
    static constexpr result<geometry> make_geometry(const config& c) noexcept {
        const unsigned levels = levels_for_aw(c.aw);
        if (levels == 0) return failure(errc::invalid);
        if (c.sllps != 0 && c.sllps != vtd_sllps::size_2m && c.sllps != (vtd_sllps::size_2m | vtd_sllps::size_1g))
            return failure(errc::invalid);
        if (c.oas < min_oas || c.oas > max_oas) return failure(errc::invalid);
        std::uint64_t sizes = leaf_sizes(0);
        for (unsigned lv = 1; lv <= 2; ++lv)
            if (superpage_allowed(c, lv)) sizes |= leaf_sizes(lv);
        sizes &= c.pgsize_bitmap;
        if (sizes == 0) return failure(errc::invalid);
        return geometry{levels, bits_per_level, c.aw, c.oas, sizes};
    }

    // ---- entries (9.8) ----
    /// Not present (R = W = 0) → empty. SS-PTE → leaf. PS set: a leaf in SS-PDE/SS-PDPE if the
    /// config's SLLPS allows that size, otherwise empty (hardware faults on it); PS in
    /// SS-PML4E/SS-PML5E is reserved → empty. Otherwise a table.
    static constexpr entry_kind classify(const config& c, unsigned level, word raw) noexcept {
        if ((raw & present_mask) == 0) return entry_kind::empty;
        if (level == 0) return entry_kind::leaf;
        if (!page_size::test(raw)) return entry_kind::table;
        return superpage_allowed(c, level) ? entry_kind::leaf : entry_kind::empty;
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word) noexcept { return item_lg2(level); }
    /// Address bits 51:12 (bits above HAW are reserved; they are not checked here).
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept { return raw & address_mask; }
    static constexpr std::uint64_t leaf_address(const config&, unsigned level, word raw) noexcept {
        return raw & bit_range(max_oas - 1, item_lg2(level));
    }
    /// R|W|address, as Linux: the leaf alone decides the permissions.
    static constexpr word make_table(const config&, unsigned, std::uint64_t pa) noexcept {
        return (pa & address_mask) | read_bit::mask | write_bit::mask;
    }
    /// address | R (READ) | W (WRITE) | SNP (config snoop) | PS (level ≥ 1). CACHE, NOEXEC, MMIO
    /// and PRIV have no second-stage encoding and are ignored, as Linux does.
    static constexpr word make_leaf(const config& c, unsigned level, unsigned, std::uint64_t oa, prot p) noexcept {
        word w = oa & address_mask;
        if (has(p, prot::read)) w |= read_bit::mask;
        if (has(p, prot::write)) w |= write_bit::mask;
        if (c.snoop) w |= snoop_bit::mask;
        if (level > 0) w |= page_size::mask;
        return w;
    }
    /// READ from R, WRITE from W; SNP comes from the config, so it is not a prot flag.
    static constexpr prot leaf_prot(const config&, unsigned, word raw) noexcept {
        prot p = prot::none;
        if (read_bit::test(raw)) p |= prot::read;
        if (write_bit::test(raw)) p |= prot::write;
        return p;
    }
    /// Every prot with READ or WRITE is accepted (the engine refuses the others).
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }

    // ---- dirty state (3.7, second-stage A/D; Linux DMA_SL_PTE_DIRTY) ----
    /// Always available: the PASID entry's SSADE turns hardware A/D updates on.
    static constexpr bool dirty_tracking(const config&) noexcept { return true; }
    static constexpr bool leaf_dirty(const config&, unsigned, word raw) noexcept { return dirty::test(raw); }
    static constexpr word leaf_clean(const config&, unsigned, word raw) noexcept { return dirty::clear(raw); }
    /// What hardware does on a write: A and D set.
    static constexpr word leaf_set_dirty(const config&, unsigned, word raw) noexcept {
        return raw | dirty::mask | accessed::mask;
    }
};

static_assert(page_table_format<vtd_sl_walker> && has_dirty_tracking<vtd_sl_walker>);

} // namespace iopgtable
