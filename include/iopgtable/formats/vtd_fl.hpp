// SPDX-License-Identifier: MIT
#pragma once
/// @file vtd_fl.hpp
/// Intel VT-d first-stage (formerly "first-level") page tables: x86-64 4-level and 5-level
/// paging, 512 8-byte entries per table, 4K pages, 2M and (with CAP.FL1GP) 1G leaves.
///
/// Spec sections followed:
/// - Intel VT-d Architecture Specification rev. 4.x/5.x, 3.6 "First-Stage Translation"
///   (4/5-level paging, canonical input addresses, A/D updates) and 9.7 "First-Stage Paging
///   Entries"; 9.6 scalable-mode PASID-table entry (FSPTPTR, FLPM 0 = 4-level, 1 = 5-level);
///   11.4.2 capability register (FL1GP bit 56, FL5LP bit 60).
/// - Intel SDM vol. 3A, 4.5 "4-Level Paging and 5-Level Paging": P 0, R/W 1, U/S 2, PWT 3,
///   PCD 4, A 5, D 6, PS 7 (PAT in a PTE), G 8, PAT 12 in 2M/1G leaves, address 51:12, XD 63;
///   PS reserved in PML4E/PML5E.
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
#include <string_view>
#include <vector>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "sharing_models.hpp"

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

struct vtd_fl {
    using word = std::uint64_t;
    using config = vtd_fl_config;
    using input_address = iova_t;
    static constexpr const char* name = "vtd-fl";
    static constexpr const char* folder = "vtd-fl";  ///< formats/<folder>/
    /// Page-table sharing registry (formats/README.md): model X86 (2), variant VT-d first-stage (1).
    static constexpr std::uint32_t sharing_model = sharing::model_x86, sharing_variant = sharing::x86_vtd_first_stage;
    static constexpr bool guest_shareable = true;
    static bool matches_registers(const register_set&) noexcept { return true; }

    static constexpr unsigned granule_lg2 = 12;
    static constexpr unsigned bits_per_level = 9;
    static constexpr unsigned max_levels = 5;
    static constexpr unsigned min_oas = 39, max_oas = 52;

    /// Bytes (log2) one entry at `level` maps: 4K, 2M, 1G, 512G, 256T.
    static constexpr unsigned item_lg2(unsigned level) noexcept { return granule_lg2 + level * bits_per_level; }
    /// Every table is 4 KiB of 8-byte entries.
    static constexpr unsigned index_lg2(unsigned) noexcept { return bits_per_level; }
    /// 4K at level 0, 2M at level 1, 1G at level 2, none above; 1G needs `allow_1g`.
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        return level <= 2 ? lg2_to_size(item_lg2(level)) : 0;
    }

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

    // ---- registers (9.6) ----
    /// `root`: FSPTPTR (4K aligned); `flpm`: the PASID entry's FLPM (0 = 4-level, 1 = 5-level).
    static register_set registers(const config&, const geometry& g, pa_t root) noexcept {
        register_set r;
        r.add("root", root.value);
        r.add("flpm", g.levels - 4);
        return r;
    }

    /// A configuration from `flpm` (0 or 1; required) and, when present, `root` (4K aligned,
    /// below 2^52). oas, 1G support and dirty tracking get their defaults. On refusal, `why`
    /// names the field.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        const auto flpm = r.get("flpm");
        if (!flpm) return why = "flpm missing", failure(errc::invalid);
        if (*flpm > 1) return why = "FLPM reserved (not 0 or 1)", failure(errc::invalid);
        if (const auto root = r.get("root")) {
            if ((*root & low_mask(granule_lg2)) != 0) return why = "root not 4K aligned", failure(errc::invalid);
            if ((*root >> max_oas) != 0) return why = "root above 52 bits", failure(errc::range);
        }
        config c;
        c.levels = 4 + static_cast<unsigned>(*flpm);
        return c;
    }

    // ---- page-table sharing (formats/README.md, "Config blobs") ----
    /// PROBE_TABLE `sizes` (model X86): the table's level count, bit 4 or 5.
    static constexpr unsigned sharing_size_bit(const geometry& g) noexcept { return g.levels; }
    /// ATTACH_TABLE config, variant VT-d first stage: le32 address width @4 (48 or 57, from
    /// FLPM), le32 domain id @8; bytes 12–63 reserved.
    static void config_to_blob(const register_set& r, std::uint32_t domain, blob& b) noexcept {
        blob_put<std::uint32_t>(b, 4, r.get("flpm").value_or(0) ? 57u : 48u);
        blob_put<std::uint32_t>(b, 8, domain);
    }
    static result<register_set> config_from_blob(const std::uint8_t* b, std::uint32_t& domain,
                                                 std::string_view& why) noexcept {
        if (!blob_zero_from(b, 12)) return why = "config.reserved", failure(errc::invalid);
        const std::uint32_t aw = blob_take<std::uint32_t>(b, 4);
        if (aw != 48 && aw != 57) return why = "config.address_width", failure(errc::invalid);
        register_set r;
        r.add("flpm", aw == 57 ? 1 : 0);
        domain = blob_take<std::uint32_t>(b, 8);
        return r;
    }

    // ---- options (iopt, vectors) ----
    /// One variant: accepts anything but a granule other than 4k.
    static bool accepts(const options& o) { return o.text("granule").value_or("4k") == "4k"; }
    /// `levels` 4|5 (default 4) or, equivalently, `flpm` 0|1 (both given: they must agree);
    /// `oas` 39..52 (default 52); `fl1gp` 0|1 (default 1); flag `dirty` (track dirty state).
    /// Errors: errc::invalid for malformed or refused values.
    static result<config> config_from(const options& o) {
        config c;
        auto levels = o.number("levels", 4), oas = o.number("oas", max_oas), fl1gp = o.number("fl1gp", 1);
        if (!levels || !oas || !fl1gp) return failure(errc::invalid);
        if (*levels > 64 || *oas > 64 || *fl1gp > 1) return failure(errc::invalid);
        if (o.has("flpm")) {
            auto flpm = o.number("flpm", 0);
            if (!flpm || *flpm > 1) return failure(errc::invalid);
            if (o.has("levels") && *levels != 4 + *flpm) return failure(errc::invalid);
            levels = 4 + *flpm;
        }
        c.levels = static_cast<unsigned>(*levels);
        c.oas = static_cast<unsigned>(*oas);
        c.allow_1g = *fl1gp == 1;
        c.track_dirty = o.flag("dirty");
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    /// Configurations the conformance suite runs: 4 and 5 levels with and without 1G pages,
    /// with dirty tracking, and a narrow host address width.
    static std::vector<config> sample_configs() {
        std::vector<config> v;
        for (unsigned levels : {4u, 5u}) {
            v.push_back(config{levels, max_oas, true, false});
            v.push_back(config{levels, max_oas, false, false});
            v.push_back(config{levels, max_oas, true, true});
        }
        v.push_back(config{4, 39, true, false});
        return v;
    }
};

static_assert(page_table_format<vtd_fl>);
static_assert(complete_format<vtd_fl>);
static_assert(has_dirty_tracking<vtd_fl>);
static_assert(vtd_fl::item_lg2(vtd_fl::max_levels - 1) + vtd_fl::bits_per_level == 57, "levels tile a 57-bit input space");
static_assert([] {
    constexpr auto g4 = vtd_fl::make_geometry(vtd_fl_config{4, 52, false});
    constexpr auto g5 = vtd_fl::make_geometry(vtd_fl_config{5});
    return g4.ok() && g4->ias == 47 && g4->pgsize_bitmap == 0x201000 && g5.ok() && g5->ias == 56 &&
           g5->pgsize_bitmap == 0x40201000;
}());

} // namespace iopgtable
