// SPDX-License-Identifier: MIT
#pragma once
/// @file riscv_walker.hpp
/// RISC-V IOMMU page tables, the walker half (the profile half is riscv.hpp): the first stage
/// (Sv39/Sv48/Sv57, `riscv-s1`) and the second stage, the G-stage (Sv39x4/Sv48x4/Sv57x4,
/// `riscv-s2`). 512 8-byte PTEs per table (the G-stage root: 2048, 16 KiB), 4K pages, a leaf
/// possible at every level (superpages), and the Svnapot 64 KiB contiguous encoding at level 0.
///
/// Spec sections followed:
/// - The RISC-V Instruction Set Manual, Volume II: Privileged Architecture (20211203):
///   4.4.1 Sv39 PTE (V 0, R 1, W 2, X 3, U 4, G 5, A 6, D 7, RSW 9:8, PPN 53:10, bits 63:54
///   reserved), 4.3.2 the translation process (V clear or W without R: page fault; R or X: a
///   leaf; a superpage leaf with low PPN bits set: page fault; a pointer at the last level:
///   page fault; A clear, or D clear on a store: page fault unless hardware updates them),
///   4.5/4.6 Sv48/Sv57; 8.5 two-stage translation (Sv39x4/48x4/57x4: two more input bits
///   resolved at the root, a 16 KiB root table; every G-stage access is a user access, so a
///   G-stage leaf with U clear faults).
/// - Svnapot (chapter "Svnapot", 1.0): N (bit 63) only in a level-0 leaf, with ppn[3:0] =
///   1000b for 64 KiB; any other N encoding is reserved (page fault). Svpbmt (chapter
///   "Svpbmt", 1.0): PBMT (62:61) 0 PMA, 1 NC, 2 IO, 3 reserved. In a pointer N and PBMT are
///   reserved (page fault), as are bits 60:54 in any PTE.
/// - RISC-V IOMMU Architecture Specification 1.0, "Device-context" fields DC.tc.SADE / GADE
///   (the IOMMU sets A and D itself): dirty tracking.
/// Where the specs leave a choice we write what Linux writes (generic_pt fmt/riscv.h): pointers
/// V|PPN; leaves V|A|U|PPN, R for READ, W|R|D for WRITE, X unless NOEXEC, with Svpbmt IO for
/// MMIO and NC without CACHE. Ours differ in two places, both documented in
/// formats/riscv/README.md: PRIV clears U in a first-stage leaf (a supervisor page), and with
/// dirty tracking a writable leaf is written with D clear.
///
/// Only the lower half of a first-stage input space is used (as for VT-d first stage): inputs
/// are 38, 47 or 56 bits. A G-stage input is unsigned: 41, 50 or 59 bits.
///
/// | ours | maps | leaf |
/// |---|---|---|
/// | 0 | 4K | 4K, or 64K with N (16 identical PTEs) |
/// | 1–4 | 2M, 1G, 512G, 256T | a superpage |
#include <cstdint>
#include <type_traits>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"

namespace iopgtable {

enum class riscv_stage { s1, s2 };

/// Run-time configuration of one RISC-V IOMMU table.
struct riscv_config {
    unsigned levels = 4;     ///< 3, 4, 5: Sv39, Sv48, Sv57 (stage 2: Sv39x4, Sv48x4, Sv57x4)
    unsigned oas = 56;       ///< output address bits: 32..56
    bool svnapot = true;     ///< 64 KiB leaves (Svnapot; capabilities.Svnapot)
    bool svpbmt = false;     ///< PBMT written (Svpbmt): NC without CACHE, IO for MMIO
    bool track_dirty = false;  ///< DC.tc.SADE / GADE: writable leaves get D clear, hardware sets it
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};  ///< restrict page sizes (intersected)
    friend constexpr bool operator==(const riscv_config&, const riscv_config&) = default;
};

template <riscv_stage Stage>
struct riscv_walker {
    static constexpr bool s1 = Stage == riscv_stage::s1;
    using word = std::uint64_t;
    using config = riscv_config;
    using input_address = std::conditional_t<s1, iova_t, ipa_t>;
    static constexpr const char* name = s1 ? "riscv-s1" : "riscv-s2";
    static constexpr const char* folder = "riscv";  ///< formats/<folder>/

    static constexpr unsigned granule_lg2 = 12, bits_per_level = 9, max_levels = 5;
    static constexpr unsigned min_oas = 32, max_oas = 56, napot_lg2 = 16;
    /// The G-stage root resolves two more input bits: 2048 entries (x4).
    static constexpr unsigned root_index_lg2 = s1 ? bits_per_level : bits_per_level + 2;

    static constexpr unsigned item_lg2(unsigned level) noexcept { return granule_lg2 + level * bits_per_level; }
    static constexpr unsigned index_lg2(unsigned) noexcept { return bits_per_level; }
    /// 4K and (Svnapot) 64K at level 0, the level's own size above.
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        if (level == 0) return lg2_to_size(granule_lg2) | lg2_to_size(napot_lg2);
        return level < max_levels ? lg2_to_size(item_lg2(level)) : 0;
    }

    // ---- PTE fields (Privileged 4.4.1, Svnapot, Svpbmt) ----
    using valid = bit<0>;
    using readable = bit<1>;
    using writable = bit<2>;
    using executable = bit<3>;
    using user = bit<4>;
    using global = bit<5>;  ///< never set
    using accessed = bit<6>;
    using dirty = bit<7>;
    using ppn = bitfield<10, 44>;
    using reserved = bitfield<54, 7>;
    using pbmt = bitfield<61, 2>;
    using napot = bit<63>;
    static constexpr word pbmt_nc = 1, pbmt_io = 2;
    static constexpr word rwx = readable::mask | writable::mask | executable::mask;

    /// Bits of input address: the lower half of Sv39/48/57, or all of Sv39x4/48x4/57x4.
    static constexpr unsigned input_bits(unsigned levels) noexcept {
        return item_lg2(levels - 1) + root_index_lg2 - (s1 ? 1 : 0);
    }

    /// Refused (errc::invalid): levels not 3..5; oas outside 32..56; no page size left.
    static constexpr result<geometry> make_geometry(const config& c) noexcept {
        if (c.levels < 3 || c.levels > max_levels) return failure(errc::invalid);
        if (c.oas < min_oas || c.oas > max_oas) return failure(errc::invalid);
        std::uint64_t sizes = 0;
        for (unsigned l = 0; l < c.levels; ++l) sizes |= leaf_sizes(l);
        if (!c.svnapot) sizes &= ~lg2_to_size(napot_lg2);
        sizes &= c.pgsize_bitmap;
        if (sizes == 0) return failure(errc::invalid);
        return geometry{c.levels, root_index_lg2, input_bits(c.levels), c.oas, sizes};
    }

    // ---- entries (Privileged 4.3.2) ----
    /// Empty: V clear; bits 60:54 set; a pointer at level 0 or with N or PBMT; W without R;
    /// PBMT 3, or PBMT without Svpbmt; N but not a level-0 64K encoding with Svnapot; a
    /// superpage with low PPN bits set; a G-stage leaf without U. These all fault in hardware.
    static constexpr entry_kind classify(const config& c, unsigned level, word raw) noexcept {
        if (!valid::test(raw) || reserved::test(raw)) return entry_kind::empty;
        if ((raw & rwx) == 0)
            return level == 0 || napot::test(raw) || pbmt::test(raw) ? entry_kind::empty : entry_kind::table;
        if (writable::test(raw) && !readable::test(raw)) return entry_kind::empty;
        if (pbmt::get(raw) == 3 || (pbmt::test(raw) && !c.svpbmt)) return entry_kind::empty;
        if (napot::test(raw) && (!c.svnapot || level != 0 || (ppn::get(raw) & 0xf) != 0x8)) return entry_kind::empty;
        if ((ppn::get(raw) & low_mask(level * bits_per_level)) != 0) return entry_kind::empty;
        if (!s1 && !user::test(raw)) return entry_kind::empty;
        return entry_kind::leaf;
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word raw) noexcept {
        return level == 0 && napot::test(raw) ? napot_lg2 : item_lg2(level);
    }
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept {
        return ppn::get(raw) << granule_lg2;
    }
    /// PPN × 4K; a 64K leaf's ppn[3:0] (the size code) is not part of the address.
    static constexpr std::uint64_t leaf_address(const config& c, unsigned level, word raw) noexcept {
        return (ppn::get(raw) << granule_lg2) & ~low_mask(leaf_lg2(c, level, raw));
    }
    /// V | PPN, as Linux.
    static constexpr word make_table(const config&, unsigned, std::uint64_t pa) noexcept {
        return valid::mask | ppn::make(pa >> granule_lg2);
    }
    /// V | A | PPN; U (first stage: unless PRIV); R for READ; W | R (| D unless tracking dirty
    /// state) for WRITE; X unless NOEXEC; with Svpbmt, PBMT IO for MMIO, NC without CACHE; a 64K
    /// leaf (16 identical PTEs) N and ppn[3:0] = 1000b.
    static constexpr word make_leaf(const config& c, unsigned, unsigned size_lg2, std::uint64_t oa, prot p) noexcept {
        word w = valid::mask | accessed::mask | ppn::make(oa >> granule_lg2);
        if (!s1 || !has(p, prot::priv)) w |= user::mask;
        if (has(p, prot::read)) w |= readable::mask;
        if (has(p, prot::write)) w |= writable::mask | readable::mask | (c.track_dirty ? 0 : dirty::mask);
        if (!has(p, prot::noexec)) w |= executable::mask;
        if (c.svpbmt) w |= has(p, prot::mmio) ? pbmt::make(pbmt_io) : has(p, prot::cache) ? 0 : pbmt::make(pbmt_nc);
        if (size_lg2 == napot_lg2) w |= napot::mask | ppn::make(0x8);
        return w;
    }
    /// READ from R, WRITE from W, NOEXEC without X, PRIV without U (first stage), CACHE with
    /// PBMT 0 (PMA), MMIO with PBMT IO.
    static constexpr prot leaf_prot(const config&, unsigned, word raw) noexcept {
        prot p = prot::none;
        if (readable::test(raw)) p |= prot::read;
        if (writable::test(raw)) p |= prot::write;
        if (!executable::test(raw)) p |= prot::noexec;
        if (s1 && !user::test(raw)) p |= prot::priv;
        if (pbmt::get(raw) == 0) p |= prot::cache;
        if (pbmt::get(raw) == pbmt_io) p |= prot::mmio;
        return p;
    }
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }

    // ---- A/D bits (4.3.2 steps 7–8; IOMMU DC.tc.SADE/GADE) ----
    static constexpr bool dirty_tracking(const config& c) noexcept { return c.track_dirty; }
    static constexpr bool leaf_dirty(const config&, unsigned, word raw) noexcept { return dirty::test(raw); }
    static constexpr word leaf_clean(const config&, unsigned, word raw) noexcept { return dirty::clear(raw); }
    static constexpr word leaf_set_dirty(const config&, unsigned, word raw) noexcept {
        return raw | dirty::mask | accessed::mask;
    }
};

static_assert(page_table_format<riscv_walker<riscv_stage::s1>> && has_dirty_tracking<riscv_walker<riscv_stage::s2>>);

} // namespace iopgtable
