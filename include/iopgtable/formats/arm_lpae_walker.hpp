// SPDX-License-Identifier: MIT
#pragma once
/// @file arm_lpae_walker.hpp
/// ARM LPAE, the walker half (the profile half is arm_lpae.hpp): the VMSAv8-64
/// long-descriptor translation table format, stage 1 and stage 2, 4 KiB, 16 KiB and 64 KiB
/// granules (Linux io-pgtable formats ARM_64_LPAE_S1/S2). Spec sections followed (Arm ARM,
/// DDI 0487):
/// - D8.2 "Translation table walk": levels, granules, start level, IAS/OAS; concatenated
///   stage-2 start tables (rules R_DXBSH, R_SRKBC).
/// - D8.3 "Translation table descriptor formats": table, block and page descriptors; 52-bit
///   OA with the 64 KiB granule (OA[51:48] in descriptor bits 15:12, FEAT_LPA).
/// - D8.4 leaf attributes (stage 1 AP[2:1], AttrIndx, SH, AF, nG, PXN/UXN; stage 2 S2AP,
///   MemAttr, XN) and D8.4.6 dirty state (DBM with AP[2] / S2AP[1], FEAT_HAFDBS).
/// Where Arm leaves a choice, we do what Linux io-pgtable-arm does (leaf bits per prot, MAIR
/// value, concatenation only when mandatory); see formats/arm-lpae/README.md.
///
/// | ours | Arm | 4K item | 16K item | 64K item | leaf here |
/// |---|---|---|---|---|---|
/// | 0 | 3 | 4K page | 16K page | 64K page | always |
/// | 1 | 2 | 2M block | 32M block | 512M block | always |
/// | 2 | 1 | 1G block | 64G (table only) | 4T block (OAS 52 only) | 4K, 64K |
/// | 3 | 0 | 512G (table only) | 128T (table only) | — | never |
#include <cstdint>
#include <type_traits>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"

namespace iopgtable {

enum class lpae_stage : unsigned { s1 = 1, s2 = 2 };

/// Quirk bits, with the values of Linux's IO_PGTABLE_QUIRK_*. `hd` is accepted at stage 2 too
/// (our extension: stage-2 DBM dirty state); Linux accepts it at stage 1 only.
namespace lpae_quirk {
inline constexpr std::uint32_t ns = 1u << 0;          ///< ARM_NS: NS in S1 leaves, NSTable in tables
inline constexpr std::uint32_t outer_wbwa = 1u << 6;  ///< ARM_OUTER_WBWA: non-coherent walk, ORGN0 = WBWA
inline constexpr std::uint32_t hd = 1u << 7;          ///< ARM_HD: hardware dirty state (DBM)
inline constexpr std::uint32_t s2fwb = 1u << 8;       ///< ARM_S2FWB: stage-2 MemAttr in FWB encoding
} // namespace lpae_quirk

/// Run-time configuration of one LPAE table.
struct lpae_config {
    unsigned ias = 48;                        ///< input address bits: 32..48 (52 with 64K)
    unsigned oas = 48;                        ///< output address bits: 32/36/40/42/44/48 (52 with 64K)
    bool coherent_walk = true;                ///< the walker snoops CPU caches (TCR cacheability)
    std::uint32_t quirks = 0;                 ///< lpae_quirk bits
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};  ///< restrict page sizes (intersected)
    friend constexpr bool operator==(const lpae_config&, const lpae_config&) = default;
};

template <lpae_stage Stage, unsigned GranuleLg2>
struct arm_lpae_walker {
    static_assert(GranuleLg2 == 12 || GranuleLg2 == 14 || GranuleLg2 == 16, "granule is 4K, 16K or 64K");

    using word = std::uint64_t;
    using config = lpae_config;
    using input_address = std::conditional_t<Stage == lpae_stage::s1, iova_t, ipa_t>;
    static constexpr lpae_stage stage = Stage;
    static constexpr unsigned granule_lg2 = GranuleLg2;
    static constexpr const char* name = Stage == lpae_stage::s1 ? "arm-lpae-s1" : "arm-lpae-s2";
    static constexpr const char* folder = "arm-lpae";  ///< formats/<folder>/

    /// Bits resolved per level: a table is one granule of 8-byte entries.
    static constexpr unsigned bits_per_level = GranuleLg2 - 3;
    static constexpr unsigned max_ias = GranuleLg2 == 16 ? 52 : 48;
    static constexpr unsigned max_levels = (max_ias - GranuleLg2 + bits_per_level - 1) / bits_per_level;

    static constexpr unsigned item_lg2(unsigned level) noexcept { return GranuleLg2 + level * bits_per_level; }
    static constexpr unsigned index_lg2(unsigned) noexcept { return bits_per_level; }
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        if (level <= 1) return lg2_to_size(item_lg2(level));
        if (level == 2 && GranuleLg2 != 14) return lg2_to_size(item_lg2(2));  // 1G (4K), 4T (64K, OAS 52)
        return 0;
    }
    static_assert(item_lg2(max_levels - 1) + bits_per_level >= max_ias, "levels tile the input space");

    // ---- descriptor fields (D8.3) ----
    using valid = bit<0>;
    using type_bit = bit<1>;                   ///< 1: table (levels > 0) / page (level 0); 0: block
    using attr_index = bitfield<2, 3>;         ///< S1 AttrIndx
    using mem_attr = bitfield<2, 4>;           ///< S2 MemAttr[3:0]
    using ns_bit = bit<5>;                     ///< S1 NS
    using ap_unpriv = bit<6>;                  ///< S1 AP[1]; S2 S2AP[0] (read)
    using ap_rdonly = bit<7>;                  ///< S1 AP[2]; S2 S2AP[1] (write)
    using sh = bitfield<8, 2>;
    using af = bit<10>;
    using ng = bit<11>;
    using oa_hi = bitfield<12, 4>;             ///< OA[51:48] with the 64K granule
    using dbm = bit<51>;
    using contiguous = bit<52>;
    using xn = bitfield<53, 2>;                ///< S1 PXN|UXN, S2 XN[1:0]
    using ns_table = bit<63>;

    static constexpr word sh_outer = 2, sh_inner = 3;
    static constexpr word mair_idx_nc = 0, mair_idx_cache = 1, mair_idx_dev = 2;
    static constexpr word memattr_dev = 0x1, memattr_nc = 0x5, memattr_oiwb = 0xf, memattr_fwb_wb = 0x6;
    /// MAIR: index 0 Normal NC (0x44), 1 Normal WB RWA (0xff), 2 Device-nGnRE (0x04), 3 0xf4.
    static constexpr std::uint64_t mair_value = 0x00000000f404ff44ull;

    static constexpr std::uint64_t pack_address(std::uint64_t pa) noexcept {
        if constexpr (GranuleLg2 == 16) return (pa | (pa >> 36)) & bit_range(47, 12);
        else return pa & bit_range(47, GranuleLg2);
    }
    static constexpr std::uint64_t unpack_address(word raw, unsigned lg2) noexcept {
        if constexpr (GranuleLg2 != 16) return raw & bit_range(47, lg2);
        const std::uint64_t a = raw & bit_range(47, 12);
        return (a | (a << 36)) & bit_range(51, lg2);
    }

    // ---- geometry (D8.2) ----
    /// Levels after concatenation, log2 entries of the (possibly concatenated) top table.
    struct layout { unsigned levels, top_index_lg2; bool concatenated; };
    static constexpr bool oas_encodable(unsigned oas) noexcept {
        return oas == 32 || oas == 36 || oas == 40 || oas == 42 || oas == 44 || oas == 48 || (oas == 52 && GranuleLg2 == 16);
    }
    /// Levels and top table of a configuration, or why it is refused.
    static constexpr result<layout> compute_layout(const config& c) noexcept {
        if (c.ias < 32 || c.ias > max_ias) return failure(errc::invalid);
        if (!oas_encodable(c.oas)) return failure(errc::invalid);
        if (Stage == lpae_stage::s2 && c.ias > c.oas) return failure(errc::invalid);
        const unsigned va_bits = c.ias - GranuleLg2;
        unsigned levels = (va_bits + bits_per_level - 1) / bits_per_level;
        unsigned top = va_bits - bits_per_level * (levels - 1);
        bool concat = false;
        if constexpr (Stage == lpae_stage::s2) {
            // Concatenate only where the architecture requires it (R_DXBSH, R_SRKBC):
            const unsigned start = 4 - levels;
            if ((GranuleLg2 == 14 && start == 0 && (c.oas == 48 || c.ias == 48)) ||
                (GranuleLg2 == 12 && start == 0 && (c.oas == 40 || c.oas == 42)) ||
                (GranuleLg2 == 14 && start == 1 && c.oas == 40)) {
                if (top > 4) return failure(errc::invalid);  // more than 16 tables
                levels -= 1;
                top += bits_per_level;
                concat = true;
            }
        }
        return layout{levels, top, concat};
    }

    static result<geometry> make_geometry(const config& c) noexcept {
        const std::uint32_t allowed = Stage == lpae_stage::s1
                                          ? (lpae_quirk::ns | lpae_quirk::outer_wbwa | lpae_quirk::hd)
                                          : (lpae_quirk::s2fwb | lpae_quirk::hd);
        if ((c.quirks & ~allowed) != 0) return failure(errc::invalid);
        if ((c.quirks & lpae_quirk::outer_wbwa) && c.coherent_walk) return failure(errc::invalid);
        auto l = compute_layout(c);
        if (!l) return failure(l.error());
        std::uint64_t sizes = 0;
        for (unsigned lv = 0; lv < l->levels; ++lv) sizes |= leaf_sizes(lv);
        if (GranuleLg2 == 16 && c.oas <= 48) sizes &= ~lg2_to_size(item_lg2(2));  // 4T needs 52-bit OA
        sizes &= c.pgsize_bitmap;
        if (sizes == 0) return failure(errc::invalid);
        return geometry{l->levels, l->top_index_lg2, c.ias, c.oas, sizes};
    }

    // ---- descriptors ----
    static constexpr entry_kind classify(const config&, unsigned level, word raw) noexcept {
        if (!valid::test(raw)) return entry_kind::empty;
        if (level == 0) return type_bit::test(raw) ? entry_kind::leaf : entry_kind::empty;  // 0b01 reserved
        if (type_bit::test(raw)) return entry_kind::table;
        return leaf_sizes(level) != 0 ? entry_kind::leaf : entry_kind::empty;  // block not allowed here
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word) noexcept { return item_lg2(level); }
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept {
        return unpack_address(raw, GranuleLg2);
    }
    static constexpr std::uint64_t leaf_address(const config&, unsigned level, word raw) noexcept {
        return unpack_address(raw, item_lg2(level));
    }
    static constexpr word make_table(const config& c, unsigned, std::uint64_t pa) noexcept {
        word w = pack_address(pa) | valid::mask | type_bit::mask;
        if (Stage == lpae_stage::s1 && (c.quirks & lpae_quirk::ns)) w |= ns_table::mask;
        return w;
    }
    /// The leaf Linux io-pgtable-arm writes for `p` (formats/arm-lpae/README.md, prot mapping).
    static constexpr word make_leaf(const config& c, unsigned level, unsigned, std::uint64_t oa, prot p) noexcept {
        word w = 0;
        if constexpr (Stage == lpae_stage::s1) {
            w |= ng::mask;
            if (!has(p, prot::write) && has(p, prot::read)) w |= ap_rdonly::mask;
            else if (c.quirks & lpae_quirk::hd) w |= dbm::mask;
            if (!has(p, prot::priv)) w |= ap_unpriv::mask;
            if (has(p, prot::mmio)) w |= attr_index::make(mair_idx_dev);
            else if (has(p, prot::cache)) w |= attr_index::make(mair_idx_cache);
            if (c.quirks & lpae_quirk::ns) w |= ns_bit::mask;
        } else {
            if (has(p, prot::read)) w |= ap_unpriv::mask;
            if (has(p, prot::write)) {
                w |= ap_rdonly::mask;
                if (c.quirks & lpae_quirk::hd) w |= dbm::mask;
            }
            if (has(p, prot::mmio)) w |= mem_attr::make(memattr_dev);
            else if (has(p, prot::cache)) w |= mem_attr::make((c.quirks & lpae_quirk::s2fwb) ? memattr_fwb_wb : memattr_oiwb);
            else w |= mem_attr::make(memattr_nc);
        }
        w |= sh::make(has(p, prot::cache) ? sh_inner : sh_outer);
        if (has(p, prot::noexec)) w |= xn::mask;
        w |= af::mask | valid::mask;
        if (level == 0) w |= type_bit::mask;
        return w | pack_address(oa);
    }
    static constexpr prot leaf_prot(const config& c, unsigned, word raw) noexcept {
        prot p = prot::none;
        if constexpr (Stage == lpae_stage::s1) {
            p |= prot::read;
            if (!ap_rdonly::test(raw) || dbm::test(raw)) p |= prot::write;
            if (!ap_unpriv::test(raw)) p |= prot::priv;
            const word idx = attr_index::get(raw);
            if (idx == mair_idx_dev) p |= prot::mmio;
            else if (idx == mair_idx_cache) p |= prot::cache;
        } else {
            if (ap_unpriv::test(raw)) p |= prot::read;
            if (ap_rdonly::test(raw) || dbm::test(raw)) p |= prot::write;
            const word m = mem_attr::get(raw);
            if (m == memattr_dev) p |= prot::mmio;
            else if (m == memattr_oiwb || (m == memattr_fwb_wb && (c.quirks & lpae_quirk::s2fwb))) p |= prot::cache;
        }
        if (sh::get(raw) == sh_inner) p |= prot::cache;
        if (xn::get(raw) != 0) p |= prot::noexec;
        return p;
    }
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }

    // ---- dirty state (FEAT_HAFDBS, D8.4.6), with quirk hd ----
    /// Writable leaves carry DBM and start dirty. Stage 1: dirty = DBM and AP[2] clear; clean
    /// sets AP[2] (hardware clears it on the next write). Stage 2: dirty = DBM and S2AP[1] set;
    /// clean clears S2AP[1] (hardware sets it on the next write). Linux implements stage 1 only.
    static constexpr bool dirty_tracking(const config& c) noexcept { return (c.quirks & lpae_quirk::hd) != 0; }
    static constexpr bool leaf_dirty(const config&, unsigned, word raw) noexcept {
        if constexpr (Stage == lpae_stage::s1) return dbm::test(raw) && !ap_rdonly::test(raw);
        else return dbm::test(raw) && ap_rdonly::test(raw);
    }
    static constexpr word leaf_clean(const config&, unsigned, word raw) noexcept {
        if constexpr (Stage == lpae_stage::s1) return raw | ap_rdonly::mask;
        else return dbm::test(raw) ? (raw & ~ap_rdonly::mask) : raw;
    }
    static constexpr word leaf_set_dirty(const config&, unsigned, word raw) noexcept {
        if constexpr (Stage == lpae_stage::s1) return dbm::test(raw) ? (raw & ~ap_rdonly::mask) : raw;
        else return dbm::test(raw) ? (raw | ap_rdonly::mask) : raw;
    }
};

static_assert(page_table_format<arm_lpae_walker<lpae_stage::s1, 12>> && has_dirty_tracking<arm_lpae_walker<lpae_stage::s2, 16>>);

} // namespace iopgtable
