// SPDX-License-Identifier: MIT
#pragma once
/// @file arm_v7s_walker.hpp
/// ARM short-descriptor translation tables ("v7s"; Linux io-pgtable format ARM_V7S), the walker
/// half (the profile half is arm_v7s.hpp): 32-bit entries, two levels, 4K small pages, 64K large
/// pages, 1M sections, 16M supersections.
///
/// Spec sections followed (Arm ARM for Armv7-A/R, DDI 0406C):
/// - B3.5 "Short-descriptor translation table format": B3.5.1 descriptor formats (first-level
///   page table / section / supersection, second-level large and small pages), B3.5.4/5
///   (table sizes, TTBR0 with TTBCR.N = 0: a 16 KiB first-level table).
/// - B3.7.x: access permissions with the simplified model and access flag (AP[0] = AF, AP[2:1]);
///   XN; memory types by TEX remap (index {TEX[0], C, B}; PRRR/NMRR are in arm_v7s.hpp).
/// - Large pages and supersections are 16 identical, aligned, replicated entries (B3.5.1).
/// Where Arm leaves a choice, we write what Linux io-pgtable-arm-v7s writes for the same prot
/// (formats/arm-v7s/README.md): nG and S always, AF, AP[1] unless PRIV, AP[2] without WRITE, XN for
/// NOEXEC, TEX remap indices 1 (device), 4 (normal NC), 7 (normal WB-WA).
///
/// Levels, ours and Arm's:
///
/// | ours | Arm | entries | entry maps | leaves |
/// |---|---|---|---|---|
/// | 0 | second level | 256 (1 KiB table) | 4K | small page 4K, large page 64K (16 copies) |
/// | 1 | first level | 2^(IAS-20) (16 KiB for IAS 32) | 1M | section 1M, supersection 16M (16 copies) |
#include <cstdint>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"

namespace iopgtable {

/// Quirk bits with the values of Linux's IO_PGTABLE_QUIRK_*.
namespace v7s_quirk {
inline constexpr std::uint32_t ns = 1u << 0;        ///< ARM_NS: NS in sections, NS in L1 table entries
inline constexpr std::uint32_t no_perms = 1u << 1;  ///< NO_PERMS: no AF/AP/XN bits (full access)
inline constexpr std::uint32_t mtk_ext = 1u << 3;   ///< ARM_MTK_EXT: PA[32] in bit 9, PA[33] in bit 4 (needs no_perms)
} // namespace v7s_quirk

struct v7s_config {
    unsigned ias = 32;          ///< 24..32
    unsigned oas = 32;          ///< 24..32, or up to 34 with mtk_ext
    bool coherent_walk = true;  ///< TTBR walk attributes
    std::uint32_t quirks = 0;   ///< v7s_quirk bits
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};
    friend constexpr bool operator==(const v7s_config&, const v7s_config&) = default;
};

struct arm_v7s_walker {
    using word = std::uint32_t;
    using config = v7s_config;
    using input_address = iova_t;
    static constexpr const char* name = "arm-v7s";
    static constexpr const char* folder = "arm-v7s";
    static constexpr unsigned max_levels = 2;

    static constexpr unsigned item_lg2(unsigned level) noexcept { return level == 0 ? 12 : 20; }
    /// Level 1 is always the top table; its run-time size comes from the IAS.
    static constexpr unsigned index_lg2(unsigned level) noexcept { return level == 0 ? 8 : 12; }
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        return level == 0 ? (lg2_to_size(12) | lg2_to_size(16)) : (lg2_to_size(20) | lg2_to_size(24));
    }

    // ---- descriptor fields (B3.5.1) ----
    using type = bitfield<0, 2, word>;
    static constexpr word type_table = 1, type_page = 2, type_cont_page = 1;
    using b_bit = bit<2, word>;
    using c_bit = bit<3, word>;
    using ns_table = bit<3, word>;
    using supersection = bit<18, word>;
    using ns_section = bit<19, word>;
    using mtk_pa32 = bit<9, word>;
    using mtk_pa33 = bit<4, word>;

    /// The attribute byte {AP[0], AP[1], TEX[2:0], AP[2], S, nG} (Linux's view) and where it sits.
    static constexpr word attr_af = 1u << 0, attr_ap_unpriv = 1u << 1, attr_ap_rdonly = 1u << 5, attr_s = 1u << 6,
                          attr_ng = 1u << 7;
    static constexpr word attr_tex(word v) noexcept { return (v & 7u) << 2; }
    static constexpr unsigned attr_shift(unsigned level) noexcept { return level == 1 ? 10 : 4; }
    static constexpr word xn_bit(unsigned level) noexcept { return level == 1 ? (1u << 4) : (1u << 0); }
    /// Large pages move XN to bit 15 and TEX to bits 14:12.
    static constexpr word large_xn = 1u << 15;
    static constexpr word small_tex_mask = 7u << 6;
    static constexpr unsigned large_tex_shift = 6;

    static constexpr bool mtk(const config& c) noexcept { return (c.quirks & v7s_quirk::mtk_ext) != 0; }

    // ---- geometry ----
    static result<geometry> make_geometry(const config& c) noexcept {
        if ((c.quirks & ~(v7s_quirk::ns | v7s_quirk::no_perms | v7s_quirk::mtk_ext)) != 0) return failure(errc::invalid);
        if (mtk(c) && !(c.quirks & v7s_quirk::no_perms)) return failure(errc::invalid);  // bits 4/5 are AP/XN
        if (c.ias < 24 || c.ias > 32) return failure(errc::invalid);
        if (c.oas < 24 || c.oas > (mtk(c) ? 34u : 32u)) return failure(errc::invalid);
        std::uint64_t sizes = leaf_sizes(0) | leaf_sizes(1);
        sizes &= c.pgsize_bitmap;
        if (sizes == 0) return failure(errc::invalid);
        return geometry{2, c.ias - 20, c.ias, c.oas, sizes};
    }

    // ---- descriptors ----
    static constexpr entry_kind classify(const config&, unsigned level, word raw) noexcept {
        if (type::get(raw) == 0) return entry_kind::empty;
        if (level == 1 && type::get(raw) == type_table) return entry_kind::table;
        return entry_kind::leaf;  // as Linux: any other valid encoding translates
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word raw) noexcept {
        if (level == 1) return supersection::test(raw) ? 24 : 20;
        return type::get(raw) == type_cont_page ? 16 : 12;
    }
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept {
        return raw & 0xfffffc00u;
    }
    static constexpr std::uint64_t leaf_address(const config& c, unsigned level, word raw) noexcept {
        const unsigned lg2 = leaf_lg2(c, level, raw);
        std::uint64_t pa = raw & static_cast<word>(~low_mask(lg2));
        if (mtk(c)) {
            if (mtk_pa32::test(raw)) pa |= std::uint64_t{1} << 32;
            if (mtk_pa33::test(raw)) pa |= std::uint64_t{1} << 33;
        }
        return pa;
    }
    static constexpr word make_table(const config& c, unsigned, std::uint64_t pa) noexcept {
        word w = static_cast<word>(pa & 0xfffffc00u) | type_table;
        if (c.quirks & v7s_quirk::ns) w |= ns_table::mask;
        return w;
    }
    /// The entry Linux io-pgtable-arm-v7s writes for `p` (each replicated copy identical).
    static constexpr word make_leaf(const config& c, unsigned level, unsigned lg2, std::uint64_t oa, prot p) noexcept {
        const bool perms = !(c.quirks & v7s_quirk::no_perms);
        word attr = attr_ng | attr_s;
        if (!has(p, prot::mmio)) attr |= attr_tex(1);
        if (perms) {
            attr |= attr_af;
            if (!has(p, prot::priv)) attr |= attr_ap_unpriv;
            if (!has(p, prot::write)) attr |= attr_ap_rdonly;
        }
        word w = static_cast<word>(attr << attr_shift(level));
        if (perms && has(p, prot::noexec)) w |= xn_bit(level);
        if (has(p, prot::mmio)) w |= b_bit::mask;
        else if (has(p, prot::cache)) w |= b_bit::mask | c_bit::mask;
        w |= type_page;
        if (level == 1 && (c.quirks & v7s_quirk::ns)) w |= ns_section::mask;
        if (lg2 > item_lg2(level)) {  // replicated: supersection / large page
            if (level == 1) {
                w |= supersection::mask;
            } else {
                const word xn = w & xn_bit(0), tex = w & small_tex_mask;
                w ^= xn | tex | type_page;
                w |= static_cast<word>((xn << 15) | (tex << large_tex_shift) | type_cont_page);
            }
        }
        w |= static_cast<word>(oa & (level == 1 ? 0xfff00000u : 0xfffff000u));
        if (mtk(c)) {
            if (oa & (std::uint64_t{1} << 32)) w |= mtk_pa32::mask;
            if (oa & (std::uint64_t{1} << 33)) w |= mtk_pa33::mask;
        }
        return w;
    }
    static constexpr prot leaf_prot(const config& c, unsigned level, word raw) noexcept {
        const bool perms = !(c.quirks & v7s_quirk::no_perms);
        word w = raw;
        bool xn = (raw & xn_bit(level)) != 0;
        if (level == 0 && type::get(raw) == type_cont_page) {  // undo the large-page moves
            xn = (raw & large_xn) != 0;
            const word tex = (raw >> large_tex_shift) & small_tex_mask;
            w = (raw & ~(small_tex_mask << large_tex_shift)) | tex;
        }
        const word attr = (w >> attr_shift(level)) & 0xffu;
        prot p = prot::read;
        if (!perms || !(attr & attr_ap_rdonly)) p |= prot::write;
        if (perms && !(attr & attr_ap_unpriv)) p |= prot::priv;
        if (perms && xn) p |= prot::noexec;
        const bool tex1 = (attr & attr_tex(1)) != 0;
        if (!tex1 && b_bit::test(w) && !c_bit::test(w)) p |= prot::mmio;
        else if (b_bit::test(w) && c_bit::test(w)) p |= prot::cache;
        return p;
    }
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }
};

static_assert(page_table_format<arm_v7s_walker>);

} // namespace iopgtable
