// SPDX-License-Identifier: MIT
#pragma once
/// @file riscv.hpp
/// RISC-V IOMMU page tables, the profile half (engine/profile.hpp; the walker half is
/// riscv_walker.hpp): what the nested walks, the sharing requests, `iopt` and the suites learn
/// about the format. Spec sections followed:
/// - RISC-V IOMMU Architecture Specification 1.0, "Device-context" fields: `iosatp` (in
///   DC.fsc: MODE 63:60 — 8 Sv39, 9 Sv48, 10 Sv57 — and PPN 43:0), `iohgatp` (MODE 63:60 —
///   8 Sv39x4, 9 Sv48x4, 10 Sv57x4 — GSCID 59:44, PPN 43:0, 16 KiB aligned), DC.tc.SADE /
///   GADE (the IOMMU sets A and D itself).
/// - The RISC-V Instruction Set Manual, Volume II: Privileged Architecture (20211203), 4.3.2
///   steps 7–8 (A clear: page fault unless the IOMMU updates A), and Svpbmt (chapter
///   "Svpbmt", 1.0: PBMT 0 PMA, 1 NC, 2 IO): the leaf's access flag and memory type, for
///   nested walks.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "riscv_walker.hpp"
#include "sharing_models.hpp"

namespace iopgtable {

template <riscv_stage Stage>
struct riscv : riscv_walker<Stage> {
    using walker = riscv_walker<Stage>;
    using word = typename walker::word;
    using config = typename walker::config;
    using accessed = typename walker::accessed;
    using pbmt = typename walker::pbmt;
    using ppn = typename walker::ppn;
    using walker::s1, walker::granule_lg2, walker::bits_per_level, walker::max_levels, walker::max_oas;
    using walker::root_index_lg2, walker::pbmt_io, walker::pbmt_nc, walker::make_geometry;
    /// Page-table sharing registry (formats/README.md): model RISC-V (3), variant first stage
    /// (1) or G-stage (2). Only first-stage tables are offered to guests.
    static constexpr std::uint32_t sharing_model = sharing::model_riscv,
                                   sharing_variant = s1 ? sharing::riscv_first_stage : sharing::riscv_g_stage;
    static constexpr bool guest_shareable = s1;
    static bool matches_registers(const register_set&) noexcept { return true; }

    // ---- access flag and memory type (4.3.2 steps 7–8, Svpbmt; optional format members, used by nested walks) ----
    /// A clear is a fault unless the IOMMU sets A itself (dirty tracking enables it).
    static constexpr bool leaf_accessed(const config& c, unsigned, word raw) noexcept {
        return c.track_dirty || accessed::test(raw);
    }
    /// PBMT: IO is Device memory, NC non-cacheable, PMA (0) cacheable.
    static constexpr memory_type leaf_memory_type(const config&, unsigned, word raw) noexcept {
        const word t = pbmt::get(raw);
        return t == pbmt_io ? memory_type::device : t == pbmt_nc ? memory_type::non_cacheable : memory_type::write_back;
    }

    // ---- registers (IOMMU device context: iosatp / iohgatp) ----
    static constexpr const char* atp_name = s1 ? "iosatp" : "iohgatp";
    /// `root`; `mode` (8, 9, 10: levels + 5); the `iosatp` / `iohgatp` word, MODE | PPN (GSCID 0);
    /// `ade`: DC.tc.SADE (first stage) or GADE (G-stage), the IOMMU updates A and D (dirty
    /// tracking); `pbmt`, `napot`: the table uses Svpbmt / Svnapot encodings (the IOMMU's
    /// capabilities it relies on).
    static register_set registers(const config& c, const geometry& g, pa_t root) noexcept {
        const std::uint64_t mode = g.levels + 5;
        register_set r;
        r.add("root", root.value);
        r.add("mode", mode);
        r.add(atp_name, mode << 60 | (root.value >> granule_lg2 & ppn::value_mask));
        r.add("ade", c.track_dirty);
        r.add("pbmt", c.svpbmt);
        r.add("napot", c.svnapot);
        return r;
    }
    /// A configuration from `mode` and/or the `iosatp` / `iohgatp` word (one required; both
    /// given, they agree): MODE 8..10; first stage: bits 59:44 zero; the root (PPN, or `root`)
    /// aligned to the root table (4 KiB, G-stage 16 KiB); `ade`, `pbmt` (default 0) and `napot`
    /// (default 1) 0 or 1. oas gets its default. On refusal `why` names the field.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        const auto atp = r.get(atp_name);
        auto mode = r.get("mode");
        if (!mode && !atp) return why = "mode missing", failure(errc::invalid);
        if (atp) {
            if (mode && *mode != *atp >> 60) return why = "mode and the atp word's MODE differ", failure(errc::invalid);
            mode = *atp >> 60;
            if (s1 && bitfield<44, 16>::test(*atp)) return why = "iosatp bits 59:44 reserved", failure(errc::invalid);
        }
        if (*mode < 8 || *mode > 10) return why = s1 ? "MODE not Sv39/Sv48/Sv57" : "MODE not Sv39x4/Sv48x4/Sv57x4", failure(errc::invalid);
        const std::uint64_t root = atp ? (*atp & ppn::value_mask) << granule_lg2 : r.get("root").value_or(0);
        if ((root & low_mask(granule_lg2 + root_index_lg2 - bits_per_level)) != 0)
            return why = s1 ? "root not 4K aligned" : "root not 16K aligned", failure(errc::invalid);
        const auto ade = r.get("ade").value_or(0), pb = r.get("pbmt").value_or(0), nap = r.get("napot").value_or(1);
        if (ade > 1 || pb > 1 || nap > 1) return why = "ade, pbmt and napot are 0 or 1", failure(errc::invalid);
        config c;
        c.levels = static_cast<unsigned>(*mode - 5);
        c.track_dirty = ade == 1;
        c.svpbmt = pb == 1;
        c.svnapot = nap == 1;
        return c;
    }

    // ---- page-table sharing (formats/README.md, "Config blobs"; first stage only) ----
    /// PROBE_TABLE `sizes` (model RISC-V): the level count, bit 3, 4 or 5.
    static constexpr unsigned sharing_size_bit(const geometry& g) noexcept { return g.levels; }
    /// ATTACH_TABLE config, variant first stage: le32 MODE @4 (iosatp.MODE: 8, 9, 10), le32
    /// PSCID @8, le32 flags @12 (bit 0 SADE, bit 1 Svpbmt, bit 2 Svnapot); bytes 16–63 reserved.
    static void config_to_blob(const register_set& r, std::uint32_t pscid, blob& b) noexcept requires(s1) {
        blob_put<std::uint32_t>(b, 4, static_cast<std::uint32_t>(r.get("mode").value_or(0)));
        blob_put<std::uint32_t>(b, 8, pscid);
        const auto on = [&](std::string_view n, std::uint64_t dflt) { return r.get(n).value_or(dflt) == 1; };
        blob_put<std::uint32_t>(b, 12, (on("ade", 0) ? 1u : 0u) | (on("pbmt", 0) ? 2u : 0u) | (on("napot", 1) ? 4u : 0u));
    }
    static result<register_set> config_from_blob(const std::uint8_t* b, std::uint32_t& pscid,
                                                 std::string_view& why) noexcept requires(s1) {
        if (!blob_zero_from(b, 16)) return why = "config.reserved", failure(errc::invalid);
        const std::uint32_t mode = blob_take<std::uint32_t>(b, 4), flags = blob_take<std::uint32_t>(b, 12);
        if (mode < 8 || mode > 10) return why = "config.mode", failure(errc::invalid);
        if (flags > 7) return why = "config.flags", failure(errc::invalid);
        register_set r;
        r.add("mode", mode);
        r.add("ade", flags & 1);
        r.add("pbmt", flags >> 1 & 1);
        r.add("napot", flags >> 2 & 1);
        pscid = blob_take<std::uint32_t>(b, 8);
        return r;
    }

    // ---- options (iopt, vectors) ----
    static bool accepts(const options& o) { return o.text("granule").value_or("4k") == "4k"; }
    /// `mode` sv39|sv48|sv57 (stage 2: sv39x4|sv48x4|sv57x4) or `levels` 3..5 (both given: they
    /// agree; default Sv48); `oas` 32..56 (default 56); `napot` 0|1 (default 1); `pbmt` 0|1
    /// (default 0); flag `dirty`. Errors: errc::invalid.
    static result<config> config_from(const options& o) {
        config c;
        auto levels = o.number("levels", 4), oas = o.number("oas", max_oas);
        auto nap = o.number("napot", 1), pb = o.number("pbmt", 0);
        if (!levels || !oas || !nap || !pb || *levels > 64 || *oas > 64 || *nap > 1 || *pb > 1) return failure(errc::invalid);
        if (auto m = o.text("mode")) {
            unsigned from_mode = 0;  // Sv<virtual address bits>, x4 for the G-stage
            for (unsigned l = 3; l <= max_levels; ++l)
                if (*m == "sv" + std::to_string(granule_lg2 + l * bits_per_level) + (s1 ? "" : "x4")) from_mode = l;
            if (from_mode == 0 || (o.has("levels") && *levels != from_mode)) return failure(errc::invalid);
            levels = from_mode;
        }
        c.levels = static_cast<unsigned>(*levels);
        c.oas = static_cast<unsigned>(*oas);
        c.svnapot = *nap == 1;
        c.svpbmt = *pb == 1;
        c.track_dirty = o.flag("dirty");
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    /// Configurations the suites run: each mode; no Svnapot; Svpbmt with dirty tracking and a
    /// narrow output; the pages Linux's CPU mappings use (4K/2M/1G) alone.
    static std::vector<config> sample_configs() {
        std::vector<config> v;
        for (unsigned levels : {3u, 4u, 5u}) v.push_back(config{levels});
        v.push_back(config{4, max_oas, false});
        v.push_back(config{3, 40, true, true, true});
        v.push_back(config{5, max_oas, true, true, true});
        v.push_back(config{4, max_oas, true, false, false, 0x40201000});
        return v;
    }
};

using riscv_s1 = riscv<riscv_stage::s1>;
using riscv_s2 = riscv<riscv_stage::s2>;

static_assert(page_table_format<riscv_s1> && page_table_format<riscv_s2>);
static_assert(complete_format<riscv_s1> && complete_format<riscv_s2>);
static_assert(has_dirty_tracking<riscv_s1> && has_access_flag<riscv_s2> && has_memory_type<riscv_s1>);
static_assert([] {
    constexpr auto g39 = riscv_s1::make_geometry(riscv_config{3});
    constexpr auto g48x4 = riscv_s2::make_geometry(riscv_config{4});
    // A 64K leaf at 0x10000, read/write: V R W X U A D | N | ppn 0x10 with ppn[3:0] = 1000b.
    constexpr auto w64k = riscv_s1::make_leaf(riscv_config{}, 0, 16, 0x10000, prot::read | prot::write);
    return g39.ok() && g39->ias == 38 && g39->top_index_lg2 == 9 && g39->pgsize_bitmap == 0x40211000 &&
           g48x4.ok() && g48x4->ias == 50 && g48x4->top_index_lg2 == 11 && w64k == 0x80000000000060df &&
           riscv_s1::leaf_lg2(riscv_config{}, 0, w64k) == 16 && riscv_s1::leaf_address(riscv_config{}, 0, w64k) == 0x10000;
}());

} // namespace iopgtable
