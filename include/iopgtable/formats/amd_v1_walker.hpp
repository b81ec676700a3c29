// SPDX-License-Identifier: MIT
#pragma once
/// @file amd_v1_walker.hpp
/// AMD-Vi host page tables ("v1"), the walker half (the profile half is amd_v1.hpp): 1 to 6
/// levels of 512 8-byte entries, every power-of-two page size from 4K up, written either at the
/// level whose entry maps that size (Next Level 0) or as identical copies of a Next-Level-7
/// entry whose address field encodes the size. The table a device table entry's Host Page Table
/// Root Pointer names: it translates what the spec calls a GPA (a DMA address, or a
/// guest-physical one under nesting), so its input is an IPA and it serves MAP domains and
/// stage 2 alike.
///
/// Spec sections followed (AMD I/O Virtualization Technology (IOMMU) Specification, #48882,
/// rev. 3.x):
/// - 2.2.3 "I/O Page Tables for Host Translations": levels 1–6 (DTE Mode), 9 index bits per
///   level, the top level of a 6-level table indexing bits 63:57 only; Table "Page Table Level
///   Parameters": the top level of a 6-level table holds no page.
/// - 2.2.3.1 PDE/PTE fields: PR 0, A 5, D 6, Next Level 11:9, address 51:12, U 59, FC 60,
///   IR 61, IW 62. A PDE's Next Level names the level of the table it points at; Next Level 0
///   is a page of the level's own size; Next Level 7 is a larger page whose size is the first
///   clear bit of the address field from bit 12 up (Table "Example Page Size Encodings"): a
///   2^n-byte page has address bits n-2..12 set and bit n-1 clear, and each entry it spans
///   holds the same value. IR/IW of every entry on the walk are ANDed.
/// - 2.2.2.1 device table entry: Mode 11:9 (the levels), HAD 8:7 (hardware A/D updates).
/// Where the spec leaves a choice we write what Linux writes (generic_pt fmt/amdv1.h): tables
/// PR|IR|IW|Next Level|address, leaves PR|address|IR/IW|FC, 512 GiB pages never (a hardware
/// erratum), no page above 2^51. Unlike Linux we write no 1T–128T page either: the engine
/// splits a Next-Level-7 page through its level's own size, which at level 3 is the 512G page
/// we may not write. See formats/amd-v1/README.md.
///
/// Levels, ours and the spec's (ours = spec − 1):
///
/// | ours | spec level | entry maps | Next Level 0 page | Next Level 7 pages |
/// |---|---|---|---|---|
/// | 0 | 1 | 4K | 4K | 8K–1M |
/// | 1 | 2 | 2M | 2M | 4M–512M |
/// | 2 | 3 | 1G | 1G | 2G–256G |
/// | 3 | 4 | 512G | (512G: not written) | 1T–128T (read, not written: see make_geometry) |
/// | 4 | 5 | 256T | 256T | 512T–2^51 |
/// | 5 | 6 | 2^57 | none (top of a 6-level table) | none |
///
/// Not modelled: level skipping (a PDE whose Next Level is below its own level minus one) is
/// read as not present, so a walk faults where hardware would skip; a PDE's IR/IW are not
/// ANDed into the leaf's (tables written here carry both); U (no translated ATS access) is
/// read and ignored. Encryption (the C bit) is not modelled.
#include <bit>
#include <cstdint>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "x86_common.hpp"

namespace iopgtable {

/// Run-time configuration of one AMD-Vi host page table.
struct amd_v1_config {
    unsigned levels = 4;      ///< DTE Mode: 1..6 levels (input 21, 30, 39, 48, 57, 64 bits)
    unsigned oas = 52;        ///< output address bits: 32..52
    bool coherent = false;    ///< FC (force coherent) in every leaf (Linux FORCE_COHERENCE)
    bool track_dirty = false; ///< DTE HAD = 11b: hardware sets A and D (EFR HDSup)
    std::uint64_t pgsize_bitmap = ~std::uint64_t{0};  ///< restrict page sizes (intersected)
    friend constexpr bool operator==(const amd_v1_config&, const amd_v1_config&) = default;
};

/// granule_lg2, bits_per_level, item_lg2 (4K, 2M, 1G, 512G, 256T, 2^57) and index_lg2 (a
/// 6-level table's top one uses 128 of its 512 entries) come from x86_radix_4k (x86_common.hpp).
struct amd_v1_walker : x86_radix_4k {
    using word = std::uint64_t;
    using config = amd_v1_config;
    using input_address = ipa_t;
    static constexpr const char* name = "amd-v1";
    static constexpr const char* folder = "amd-v1";  ///< formats/<folder>/

    static constexpr unsigned max_levels = 6;
    static constexpr unsigned min_oas = 32, max_oas = 52;
    /// Largest page written (Linux: the address field ends at bit 51).
    static constexpr unsigned max_page_lg2 = 51;
    /// 512 GiB pages are never written (an erratum; Linux leaves them out too).
    static constexpr std::uint64_t erratum_sizes = std::uint64_t{1} << 39;

    /// The level's own size and the Next-Level-7 sizes above it up to 2^51, less 512G; none at
    /// level 5.
    static constexpr std::uint64_t leaf_sizes(unsigned level) noexcept {
        if (level >= 5) return 0;
        const unsigned lo = item_lg2(level), hi = lo + bits_per_level - 1;
        return bit_range(hi < max_page_lg2 ? hi : max_page_lg2, lo) & ~erratum_sizes;
    }

    // ---- entry fields (2.2.3.1) ----
    using present = bit<0>;
    using accessed = bit<5>;
    using dirty = bit<6>;
    using next_level = bitfield<9, 3>;
    using untranslated_only = bit<59>;   ///< U: read, never written
    using force_coherent = bit<60>;
    using read_bit = bit<61>;
    using write_bit = bit<62>;
    static constexpr word address_mask = bit_range(max_oas - 1, granule_lg2);
    static constexpr unsigned nl_page = 0, nl_sized = 7;

    /// log2 of the page a Next-Level-7 entry encodes: the first clear address bit from 12 up,
    /// plus one (a 2^n page has bits n-2..12 set). 53 when bits 51:12 are all set.
    static constexpr unsigned sized_lg2(word raw) noexcept {
        return granule_lg2 + 1 + static_cast<unsigned>(std::countr_one((raw & address_mask) >> granule_lg2));
    }

    // ---- geometry (2.2.3) ----
    /// Refused (errc::invalid): levels outside 1..6, oas outside 32..52, a page-size
    /// restriction that drops 4K (splits and every table need the granule). A level whose own
    /// size is left out keeps none of its Next-Level-7 sizes (always so at level 3: 512G).
    static constexpr result<geometry> make_geometry(const config& c) noexcept {
        if (c.levels < 1 || c.levels > max_levels) return failure(errc::invalid);
        if (c.oas < min_oas || c.oas > max_oas) return failure(errc::invalid);
        const unsigned span = item_lg2(c.levels - 1) + bits_per_level;
        const unsigned ias = span < 64 ? span : 64;
        const std::uint64_t allowed = low_mask(ias) & low_mask(c.oas) & c.pgsize_bitmap;
        std::uint64_t sizes = 0;
        // The engine splits a Next-Level-7 page through its level's own size: a level whose own
        // size is out (512G always) keeps none of its larger sizes either.
        for (unsigned lv = 0; lv < c.levels; ++lv)
            if (const std::uint64_t here = leaf_sizes(lv) & allowed; (here & lg2_to_size(item_lg2(lv))) != 0) sizes |= here;
        if ((sizes & lg2_to_size(granule_lg2)) == 0) return failure(errc::invalid);
        return geometry{c.levels, bits_per_level, ias, c.oas, sizes};
    }

    // ---- entries (2.2.3.1) ----
    /// PR clear → empty. Next Level 0: a page of the level's size (none at level 5). Next
    /// Level 7: a page of the encoded size, when that size is the level's own or one of the
    /// larger ones the level can hold; any other size is reserved → empty. Next Level equal
    /// to our level (the spec's level minus one): a table. Any other Next Level (level 0 only
    /// holds pages; skipping levels is not modelled) → empty.
    static constexpr entry_kind classify(const config&, unsigned level, word raw) noexcept {
        if (!present::test(raw)) return entry_kind::empty;
        const unsigned nl = static_cast<unsigned>(next_level::get(raw));
        if (level >= 5) return nl == level ? entry_kind::table : entry_kind::empty;
        if (nl == nl_page) return entry_kind::leaf;
        if (nl == nl_sized) {
            const unsigned s = sized_lg2(raw), item = item_lg2(level);
            return s >= item && s < item + bits_per_level && s <= max_page_lg2 ? entry_kind::leaf : entry_kind::empty;
        }
        return level > 0 && nl == level ? entry_kind::table : entry_kind::empty;
    }
    static constexpr unsigned leaf_lg2(const config&, unsigned level, word raw) noexcept {
        return next_level::get(raw) == nl_sized ? sized_lg2(raw) : item_lg2(level);
    }
    static constexpr std::uint64_t table_address(const config&, unsigned, word raw) noexcept { return raw & address_mask; }
    static constexpr std::uint64_t leaf_address(const config& c, unsigned level, word raw) noexcept {
        return raw & address_mask & ~low_mask(leaf_lg2(c, level, raw));
    }
    /// PR | IR | IW | Next Level (our level: the next table's spec level) | address.
    static constexpr word make_table(const config&, unsigned level, std::uint64_t pa) noexcept {
        return (pa & address_mask) | present::mask | read_bit::mask | write_bit::mask | next_level::make(level);
    }
    /// PR | address | IR (READ) | IW (WRITE) | FC (config coherent); Next Level 0 for the
    /// level's own size, else Next Level 7 with address bits size-2..12 set. CACHE, NOEXEC,
    /// MMIO and PRIV have no encoding and are ignored, as Linux does.
    static constexpr word make_leaf(const config& c, unsigned level, unsigned size_lg2, std::uint64_t oa, prot p) noexcept {
        word w = (oa & address_mask) | present::mask;
        if (size_lg2 != item_lg2(level))
            w |= next_level::make(nl_sized) | (low_mask(size_lg2 - 1) & ~low_mask(granule_lg2));
        if (has(p, prot::read)) w |= read_bit::mask;
        if (has(p, prot::write)) w |= write_bit::mask;
        if (c.coherent) w |= force_coherent::mask;
        return w;
    }
    /// READ from IR, WRITE from IW; FC comes from the config, so it is not a prot flag.
    static constexpr prot leaf_prot(const config&, unsigned, word raw) noexcept {
        prot p = prot::none;
        if (read_bit::test(raw)) p |= prot::read;
        if (write_bit::test(raw)) p |= prot::write;
        return p;
    }
    /// Every prot with READ or WRITE is accepted (the engine refuses the others).
    static constexpr result<void> check_prot(const config&, prot) noexcept { return success(); }

    // ---- dirty state (2.2.3.1 A/D, 2.2.2.1 HAD) ----
    static constexpr bool dirty_tracking(const config& c) noexcept { return c.track_dirty; }
    static constexpr bool leaf_dirty(const config&, unsigned, word raw) noexcept { return dirty::test(raw); }
    static constexpr word leaf_clean(const config&, unsigned, word raw) noexcept { return dirty::clear(raw); }
    /// What hardware does on a write: A and D set.
    static constexpr word leaf_set_dirty(const config&, unsigned, word raw) noexcept {
        return raw | dirty::mask | accessed::mask;
    }
};

static_assert(page_table_format<amd_v1_walker> && has_dirty_tracking<amd_v1_walker>);

} // namespace iopgtable
