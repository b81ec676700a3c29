// SPDX-License-Identifier: MIT
#pragma once
/// @file arm_lpae.hpp
/// ARM LPAE: the VMSAv8-64 long-descriptor translation table format, stage 1 and stage 2,
/// 4 KiB, 16 KiB and 64 KiB granules (Linux io-pgtable formats ARM_64_LPAE_S1/S2).
///
/// Spec sections followed (Arm ARM, DDI 0487):
/// - D8.2 "Translation table walk" / D8.2.x: levels, granules, start level, IAS/OAS;
///   concatenated stage-2 start tables (rules R_DXBSH, R_SRKBC).
/// - D8.3 "Translation table descriptor formats": table, block and page descriptors; 52-bit
///   OA with the 64 KiB granule (OA[51:48] in descriptor bits 15:12, FEAT_LPA).
/// - D8.4 (stage 1 AP[2:1], AttrIndx, SH, AF, nG, PXN/UXN; stage 2 S2AP, MemAttr, XN) and
///   D8.4.x dirty state (DBM with AP[2] / S2AP[1], FEAT_HAFDBS).
/// - D19 registers: TCR_EL1 (T0SZ, IRGN0, ORGN0, SH0, TG0, EPD1, IPS, HA, HD), MAIR_EL1,
///   VTCR_EL2 (T0SZ, SL0, IRGN0, ORGN0, SH0, TG0, PS, RES1 bit 31).
/// Where Arm leaves a choice, we do what Linux io-pgtable-arm does (leaf bits per prot, MAIR
/// value, concatenation only when mandatory); see formats/arm-lpae/README.md.
///
/// Levels, ours (from the leaf up) and Arm's:
///
/// | ours | Arm | 4K item | 16K item | 64K item | leaf here |
/// |---|---|---|---|---|---|
/// | 0 | 3 | 4K page | 16K page | 64K page | always |
/// | 1 | 2 | 2M block | 32M block | 512M block | always |
/// | 2 | 1 | 1G block | 64G (table only) | 4T block (OAS 52 only) | 4K, 64K |
/// | 3 | 0 | 512G (table only) | 128T (table only) | — | never |
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
struct arm_lpae {
    static_assert(GranuleLg2 == 12 || GranuleLg2 == 14 || GranuleLg2 == 16, "granule is 4K, 16K or 64K");

    using word = std::uint64_t;
    using config = lpae_config;
    using input_address = std::conditional_t<Stage == lpae_stage::s1, iova_t, ipa_t>;
    static constexpr lpae_stage stage = Stage;
    static constexpr unsigned granule_lg2 = GranuleLg2;
    static constexpr const char* name = Stage == lpae_stage::s1 ? "arm-lpae-s1" : "arm-lpae-s2";
    static constexpr const char* folder = "arm-lpae";  ///< formats/<folder>/
    /// Page-table sharing registry (formats/README.md): model ARM (1), variant LPAE 64-bit (1).
    /// Only stage-1 tables are offered to guests.
    static constexpr std::uint32_t sharing_model = sharing::model_arm, sharing_variant = sharing::arm_lpae64;
    static constexpr bool guest_shareable = Stage == lpae_stage::s1;
    /// Leaf permissions as the Arm ARM decides them per stage (engine/format.hpp).
    static constexpr permission_rule leaf_permissions =
        Stage == lpae_stage::s1 ? permission_rule::arm_stage1 : permission_rule::arm_stage2;
    /// An input beyond the IAS is a translation fault at Arm's level 0 (pseudocode
    /// AArch64.S1Translate / S2Translate: VAIsOutOfRange, IPAIsOutOfRange), our level 3 for
    /// every granule, above the top level when the walk starts lower (IAS 39 with 4K: top level
    /// 2; the 64K granule has no level-0 table but still reports 0).
    static constexpr unsigned input_fault_level(const geometry&) noexcept { return 3; }
    static constexpr const char* granule_name = GranuleLg2 == 12 ? "4k" : GranuleLg2 == 14 ? "16k" : "64k";

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
        if constexpr (GranuleLg2 == 16) {
            const std::uint64_t a = raw & bit_range(47, 12);
            return (a | (a << 36)) & bit_range(51, lg2);
        } else {
            return raw & bit_range(47, lg2);
        }
    }

    // ---- geometry (D8.2) ----
    struct layout {
        unsigned levels;         ///< levels after concatenation
        unsigned top_index_lg2;  ///< log2 entries of the (possibly concatenated) top table
        bool concatenated;
    };

    static constexpr bool oas_encodable(unsigned oas) noexcept {
        return oas == 32 || oas == 36 || oas == 40 || oas == 42 || oas == 44 || oas == 48 || (oas == 52 && GranuleLg2 == 16);
    }
    static constexpr unsigned ips_encoding(unsigned oas) noexcept {
        switch (oas) {
        case 32: return 0;
        case 36: return 1;
        case 40: return 2;
        case 42: return 3;
        case 44: return 4;
        case 48: return 5;
        default: return 6;  // 52
        }
    }
    static constexpr int oas_from_ips(std::uint64_t ips) noexcept {
        constexpr int table[8] = {32, 36, 40, 42, 44, 48, 52, -1};
        return table[ips & 7];
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

    // ---- access flag and memory type (D8.4; optional format members, used by nested walks) ----
    /// AF (bit 10): a leaf with AF clear takes an access-flag fault (we never enable hardware AF updates).
    static constexpr bool leaf_accessed(const config&, unsigned, word raw) noexcept { return af::test(raw); }
    /// Stage 1: the MAIR_EL1 attribute AttrIndx selects from `mair_value` (0 Normal NC, 1 Normal WB,
    /// 2 Device, 3 inner NC / outer WB, 4..7 0x00 = Device-nGnRnE). Stage 2 (D8.5.5): MemAttr[3:2]
    /// outer, [1:0] inner; outer 00 is Device, otherwise 01 NC, 10 WT, 11 WB (the more restrictive
    /// of inner and outer). With s2fwb (FEAT_S2FWB): MemAttr[2] clear is Device, [1:0] 01 NC,
    /// 10 forced WB, 11 "stage 1 decides"; both of the latter are `write_back` here, so stage 1's
    /// type still restricts the combination (Arm's forced WB would override it).
    static constexpr memory_type leaf_memory_type(const config& c, unsigned, word raw) noexcept {
        constexpr auto less = [](memory_type a, memory_type b) { return a < b ? a : b; };
        if constexpr (Stage == lpae_stage::s1) {
            // One MAIR nibble of a Normal attribute (D19 MAIR_EL1): 0b0100 NC, 0b00rw/0b10rw WT, 0b01rw/0b11rw WB.
            constexpr auto nibble = [](unsigned n) {
                if (n == 0b0100) return memory_type::non_cacheable;
                if (n == 0) return memory_type::non_cacheable;  // UNPREDICTABLE in a Normal attribute
                return (n & 0b0100) ? memory_type::write_back : memory_type::write_through;
            };
            const unsigned attr = static_cast<unsigned>(mair_value >> (8 * attr_index::get(raw))) & 0xffu;
            if ((attr >> 4) == 0) return memory_type::device;
            return less(nibble(attr >> 4), nibble(attr & 0xfu));
        } else {
            const unsigned m = static_cast<unsigned>(mem_attr::get(raw));
            if (c.quirks & lpae_quirk::s2fwb) {
                if ((m & 0b0100) == 0) return memory_type::device;
                return (m & 0b11) == 0b01 ? memory_type::non_cacheable
                       : (m & 0b11) == 0b00 ? memory_type::device  // reserved: the most restrictive
                                            : memory_type::write_back;
            }
            constexpr auto half = [](unsigned h) {
                return h == 0b11 ? memory_type::write_back : h == 0b10 ? memory_type::write_through : memory_type::non_cacheable;
            };
            if ((m >> 2) == 0) return memory_type::device;
            return less(half(m >> 2), half(m & 0b11));
        }
    }

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

    // ---- registers (D19: TCR_EL1, MAIR_EL1, VTCR_EL2) ----
    using t0sz = bitfield<0, 6>;
    using sl0 = bitfield<6, 2>;
    using epd0 = bit<7>;
    using irgn0 = bitfield<8, 2>;
    using orgn0 = bitfield<10, 2>;
    using sh0 = bitfield<12, 2>;
    using tg0 = bitfield<14, 2>;
    using ps = bitfield<16, 3>;     ///< VTCR
    using epd1 = bit<23>;
    using ips = bitfield<32, 3>;    ///< TCR
    using ha = bit<39>;
    using hd_bit = bit<40>;
    using vtcr_res1 = bit<31>;
    using vtcr_ha = bit<21>;
    using vtcr_hd = bit<22>;

    static constexpr std::uint64_t tg0_encoding = GranuleLg2 == 12 ? 0 : GranuleLg2 == 16 ? 1 : 2;

    /// Arm start level (0..3) of a geometry.
    static constexpr unsigned arm_start_level(const geometry& g) noexcept { return 4 - g.levels; }
    static constexpr std::uint64_t sl0_encoding(const geometry& g) noexcept {
        return GranuleLg2 == 12 ? 2 - arm_start_level(g) : 3 - arm_start_level(g);
    }
    static constexpr std::uint64_t walk_attributes(const config& c) noexcept {
        if (c.coherent_walk) return irgn0::make(1) | orgn0::make(1) | sh0::make(3);
        return irgn0::make(0) | orgn0::make((c.quirks & lpae_quirk::outer_wbwa) ? 1 : 0) | sh0::make(2);
    }

    /// Stage 1: ttbr, tcr, mair. Stage 2: vttbr, vtcr. `geo` must come from `c`.
    static register_set registers(const config& c, const geometry& g, pa_t root) noexcept {
        register_set r;
        const std::uint64_t base = t0sz::make(64 - c.ias) | walk_attributes(c) | tg0::make(tg0_encoding);
        if constexpr (Stage == lpae_stage::s1) {
            std::uint64_t tcr = base | epd1::mask | ips::make(ips_encoding(c.oas));
            if (c.quirks & lpae_quirk::hd) tcr |= ha::mask | hd_bit::mask;
            r.add("ttbr", root.value);
            r.add("tcr", tcr);
            r.add("mair", mair_value);
        } else {
            r.add("vttbr", root.value);
            std::uint64_t vtcr = base | sl0::make(sl0_encoding(g)) | ps::make(ips_encoding(c.oas)) | vtcr_res1::mask;
            if (c.quirks & lpae_quirk::hd) vtcr |= vtcr_ha::mask | vtcr_hd::mask;
            r.add("vtcr", vtcr);
        }
        return r;
    }

    /// Reads a configuration back from register values (tcr + mair, or vtcr). On refusal,
    /// `why` names the field. Refused: TG0 not this granule or reserved, T0SZ out of range,
    /// IPS/PS reserved or unsupported, SL0 inconsistent, walk attributes we never produce,
    /// EPD0 set, MAIR without our attribute indices, stage 2 with IAS > OAS.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        config c;
        const auto ctl = r.get(Stage == lpae_stage::s1 ? "tcr" : "vtcr");
        if (!ctl) return why = Stage == lpae_stage::s1 ? "tcr missing" : "vtcr missing", failure(errc::invalid);
        const std::uint64_t v = *ctl;
        if (tg0::get(v) == 3) return why = "TG0 reserved", failure(errc::invalid);
        if (tg0::get(v) != tg0_encoding) return why = "TG0 is not this granule", failure(errc::unsupported);
        const unsigned tsz = static_cast<unsigned>(t0sz::get(v));
        if (tsz > 32 || 64 - tsz > max_ias || 64 - tsz < 32) return why = "T0SZ out of range", failure(errc::range);
        c.ias = 64 - tsz;
        const int oas = oas_from_ips(Stage == lpae_stage::s1 ? ips::get(v) : ps::get(v));
        if (oas < 0) return why = Stage == lpae_stage::s1 ? "IPS reserved" : "PS reserved", failure(errc::invalid);
        if (!oas_encodable(static_cast<unsigned>(oas)))
            return why = Stage == lpae_stage::s1 ? "IPS not supported by this granule" : "PS not supported by this granule",
                   failure(errc::unsupported);
        c.oas = static_cast<unsigned>(oas);
        const std::uint64_t ir = irgn0::get(v), orr = orgn0::get(v), shv = sh0::get(v);
        if (ir == 1 && orr == 1 && shv == 3) {
            c.coherent_walk = true;
        } else if (ir == 0 && (orr == 0 || orr == 1) && shv == 2 && Stage == lpae_stage::s1) {
            c.coherent_walk = false;
            if (orr == 1) c.quirks |= lpae_quirk::outer_wbwa;
        } else if (ir == 0 && orr == 0 && shv == 2) {
            c.coherent_walk = false;
        } else {
            return why = "IRGN0/ORGN0/SH0 combination not supported", failure(errc::unsupported);
        }
        if constexpr (Stage == lpae_stage::s1) {
            if (epd0::test(v)) return why = "EPD0 set (walks disabled)", failure(errc::invalid);
            if (hd_bit::test(v)) c.quirks |= lpae_quirk::hd;
            const auto mair = r.get("mair");
            if (!mair) return why = "mair missing", failure(errc::invalid);
            for (unsigned i = 0; i < 3; ++i)
                if (((*mair >> (8 * i)) & 0xff) != ((mair_value >> (8 * i)) & 0xff))
                    return why = "MAIR attribute 0..2 not 0x44/0xff/0x04", failure(errc::invalid);
        }
        auto l = compute_layout(c);
        if (!l) return why = Stage == lpae_stage::s2 && c.ias > c.oas ? "T0SZ: IPA size above PS" : "T0SZ/IPS combination",
                     failure(l.error());
        if constexpr (Stage == lpae_stage::s2) {
            if (vtcr_hd::test(v)) c.quirks |= lpae_quirk::hd;
            geometry g{l->levels, l->top_index_lg2, c.ias, c.oas, 0};
            if (sl0::get(v) != sl0_encoding(g)) return why = "SL0 inconsistent with T0SZ and granule", failure(errc::invalid);
        }
        return c;
    }

    /// True when TCR/VTCR values describe this granule (TG0), so a register set picks its engine.
    static bool matches_registers(const register_set& r) noexcept {
        const auto ctl = r.get(Stage == lpae_stage::s1 ? "tcr" : "vtcr");
        return ctl && tg0::get(*ctl) == tg0_encoding;
    }

    // ---- page-table sharing (formats/README.md, "Config blobs"; stage 1 only) ----
    /// PROBE_TABLE `sizes` (model ARM): the granule, bit log2(granule).
    static constexpr unsigned sharing_size_bit(const geometry&) noexcept requires(Stage == lpae_stage::s1) {
        return GranuleLg2;
    }
    /// ATTACH_TABLE config, variant LPAE 64-bit: le32 0 @4, le64 tcr @8 (TCR_EL1 layout),
    /// le64 mair @16, le32 asid @24; bytes 28–63 reserved.
    static void config_to_blob(const register_set& r, std::uint32_t asid, blob& b) noexcept
        requires(Stage == lpae_stage::s1) {
        blob_put<std::uint64_t>(b, 8, r.get("tcr").value_or(0));
        blob_put<std::uint64_t>(b, 16, r.get("mair").value_or(0));
        blob_put<std::uint32_t>(b, 24, asid);
    }
    static result<register_set> config_from_blob(const std::uint8_t* b, std::uint32_t& asid,
                                                 std::string_view& why) noexcept requires(Stage == lpae_stage::s1) {
        if (blob_take<std::uint32_t>(b, 4) != 0 || !blob_zero_from(b, 28))
            return why = "config.reserved", failure(errc::invalid);
        register_set r;
        r.add("tcr", blob_take<std::uint64_t>(b, 8));
        r.add("mair", blob_take<std::uint64_t>(b, 16));
        asid = blob_take<std::uint32_t>(b, 24);
        return r;
    }

    // ---- options (iopt) ----
    /// Selects this granule: `granule` = 4k|16k|64k.
    static bool accepts(const options& o) { return o.text("granule").value_or("4k") == granule_name; }
    /// `ias`, `oas` (default 48), `coherent` 0|1 (or flag `noncoherent`), `quirks` (comma list:
    /// ns, hd, s2fwb, outer_wbwa, or none).
    static result<config> config_from(const options& o) {
        config c;
        auto ias = o.number("ias", 48), oas = o.number("oas", 48);
        if (!ias || !oas) return failure(errc::invalid);
        if (*ias > 64 || *oas > 64) return failure(errc::invalid);
        c.ias = static_cast<unsigned>(*ias);
        c.oas = static_cast<unsigned>(*oas);
        auto coherent = o.number("coherent", 1);
        if (!coherent || *coherent > 1) return failure(errc::invalid);
        c.coherent_walk = *coherent == 1 && !o.flag("noncoherent");
        if (auto q = o.text("quirks")) {
            std::string_view s = *q;
            while (!s.empty()) {
                auto comma = s.find(',');
                auto w = s.substr(0, comma);
                if (w == "ns") c.quirks |= lpae_quirk::ns;
                else if (w == "hd") c.quirks |= lpae_quirk::hd;
                else if (w == "s2fwb") c.quirks |= lpae_quirk::s2fwb;
                else if (w == "outer_wbwa") c.quirks |= lpae_quirk::outer_wbwa;
                else if (w != "none" && !w.empty()) return failure(errc::invalid);
                s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
            }
        }
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    /// Configurations the conformance suite runs: smallest, largest and typical IAS/OAS pairs,
    /// and every stage-2 concatenation case this granule has.
    static std::vector<config> sample_configs() {
        std::vector<config> v;
        auto add = [&](unsigned ias, unsigned oas) {
            config c;
            c.ias = ias;
            c.oas = oas;
            if (make_geometry(c).ok()) v.push_back(c);
        };
        add(32, 32);
        add(36, 40);
        add(39, 44);
        add(40, 40);
        add(42, 42);
        add(44, 48);
        add(48, 48);
        if constexpr (GranuleLg2 == 16) {
            add(52, 52);
            add(42, 52);
        }
        if constexpr (GranuleLg2 == 14) add(37, 40);
        config dirty;  // hardware dirty state (DBM) on writable leaves
        dirty.quirks = lpae_quirk::hd;
        v.push_back(dirty);
        return v;
    }
};

using arm_lpae_s1_4k = arm_lpae<lpae_stage::s1, 12>;
using arm_lpae_s1_16k = arm_lpae<lpae_stage::s1, 14>;
using arm_lpae_s1_64k = arm_lpae<lpae_stage::s1, 16>;
using arm_lpae_s2_4k = arm_lpae<lpae_stage::s2, 12>;
using arm_lpae_s2_16k = arm_lpae<lpae_stage::s2, 14>;
using arm_lpae_s2_64k = arm_lpae<lpae_stage::s2, 16>;

static_assert(page_table_format<arm_lpae_s1_4k>);
static_assert(complete_format<arm_lpae_s1_4k>);
static_assert(has_dirty_tracking<arm_lpae_s2_64k>);
static_assert(has_access_flag<arm_lpae_s1_4k> && has_memory_type<arm_lpae_s2_4k>);
static_assert(arm_lpae_s1_4k::max_levels == 4 && arm_lpae_s1_16k::max_levels == 4 && arm_lpae_s1_64k::max_levels == 3);

} // namespace iopgtable
