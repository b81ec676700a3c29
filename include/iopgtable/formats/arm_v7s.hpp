// SPDX-License-Identifier: MIT
#pragma once
/// @file arm_v7s.hpp
/// ARM short-descriptor translation tables ("v7s"), the profile half (engine/profile.hpp; the
/// walker half is arm_v7s_walker.hpp): what the nested walks, the sharing requests, `iopt` and
/// the suites learn about the format. Spec sections followed (Arm ARM for Armv7-A/R, DDI 0406C):
/// - Registers: B4.1.154 TTBR0, B4.1.153 TTBCR, B4.1.127 PRRR, B4.1.104 NMRR (the TEX-remap
///   memory types of the indices 1, 4 and 7 the walker writes).
/// - B3.7.x access flag (simplified model, AP[0] = AF) and B3.8.2 TEX remap (index {TEX[0], C,
///   B}, PRRR/NMRR): the leaf's access flag and memory type, for nested walks.
#include <cstdint>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "arm_v7s_walker.hpp"
#include "sharing_models.hpp"

namespace iopgtable {

struct arm_v7s : arm_v7s_walker {
    using walker = arm_v7s_walker;
    /// Page-table sharing registry (formats/README.md): model ARM (1), variant short-descriptor (3).
    static constexpr std::uint32_t sharing_model = sharing::model_arm, sharing_variant = sharing::arm_short;
    static constexpr bool guest_shareable = true;
    static bool matches_registers(const register_set&) noexcept { return true; }

    // ---- access flag and memory type (B3.7; optional format members, used by nested walks) ----
    /// AP[0] is the access flag (simplified model, SCTLR.AFE = 1); with no_perms nothing faults.
    static constexpr bool leaf_accessed(const config& c, unsigned level, word raw) noexcept {
        return (c.quirks & v7s_quirk::no_perms) || ((raw >> attr_shift(level)) & attr_af) != 0;
    }
    /// TEX remap (B3.8.2): index {TEX[0], C, B}; PRRR.TRn says Device (0 strongly ordered, 1
    /// device) or Normal, and for Normal NMRR.IRn / ORn say NC (0), WB-WA (1), WT (2), WB (3),
    /// the more restrictive of inner and outer. TEX[0] is bit 6 of a small page, bit 12 of a
    /// large page or a section.
    static constexpr memory_type leaf_memory_type(const config&, unsigned level, word raw) noexcept {
        const bool small = level == 0 && type::get(raw) != type_cont_page;
        const unsigned tex0 = (raw >> (small ? 6u : 12u)) & 1u;
        const unsigned index = (tex0 << 2) | (c_bit::test(raw) ? 2u : 0u) | (b_bit::test(raw) ? 1u : 0u);
        if (((prrr_value >> (2 * index)) & 3u) != 2u) return memory_type::device;
        constexpr auto region = [](unsigned r) {
            return r == 0 ? memory_type::non_cacheable : r == 2 ? memory_type::write_through : memory_type::write_back;
        };
        const memory_type inner = region((nmrr_value >> (2 * index)) & 3u);
        const memory_type outer = region((nmrr_value >> (16 + 2 * index)) & 3u);
        return inner < outer ? inner : outer;
    }

    // ---- registers (B4.1.154 TTBR0, B4.1.153 TTBCR, B4.1.127 PRRR, B4.1.104 NMRR) ----
    static constexpr std::uint32_t prrr_value = 0x800b8204u;  ///< TR1 device, TR4/TR7 normal, DS0, DS1, NS1, NOS7
    static constexpr std::uint32_t nmrr_value = 0x40004000u;  ///< index 7 inner/outer WB-WA, rest NC
    static constexpr std::uint32_t ttbr_s = 1u << 1, ttbr_nos = 1u << 5;
    static constexpr std::uint32_t ttbr_irgn_wbwa = 1u << 6;  ///< IRGN[0] is bit 6, IRGN[1] bit 0
    static constexpr std::uint32_t ttbr_rgn_wbwa = 1u << 3;   ///< RGN bits 4:3 = 01

    /// ttbr (root | S | walk attributes), tcr (0: T0SZ 0, EAE 0), prrr, nmrr.
    static register_set registers(const config& c, const geometry&, pa_t root) noexcept {
        register_set r;
        std::uint64_t ttbr = root.value | ttbr_s;
        if (c.coherent_walk) ttbr |= ttbr_nos | ttbr_irgn_wbwa | ttbr_rgn_wbwa;
        r.add("ttbr", ttbr);
        r.add("tcr", 0);
        r.add("prrr", prrr_value);
        r.add("nmrr", nmrr_value);
        return r;
    }

    /// Reads a configuration back from tcr, prrr and nmrr (and ttbr's walk attributes when
    /// present). Refused: TTBCR.N ≠ 0 or EAE or PD0 set; PRRR/NMRR not describing the memory
    /// types our TEX-remap indices 1, 4 and 7 use.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        config c;
        const auto tcr = r.get("tcr"), prrr = r.get("prrr"), nmrr = r.get("nmrr");
        if (!tcr || !prrr || !nmrr) return why = "tcr, prrr and nmrr are required", failure(errc::invalid);
        if ((*tcr & 7u) != 0) return why = "TTBCR.N must be 0 (TTBR0 covers the whole 32-bit space)", failure(errc::unsupported);
        if (*tcr & (1u << 31)) return why = "TTBCR.EAE set (long-descriptor format)", failure(errc::invalid);
        if (*tcr & (1u << 4)) return why = "TTBCR.PD0 set (walks disabled)", failure(errc::invalid);
        if (*tcr >> 32) return why = "tcr wider than 32 bits", failure(errc::invalid);
        // PRRR: TR1, TR4, TR7 (2 bits each), DS0/DS1, NS1, NOS7 as we rely on them.
        constexpr std::uint64_t prrr_mask = (3u << 2) | (3u << 8) | (3u << 14) | (3u << 16) | (1u << 19) | (1u << 31);
        if ((*prrr & prrr_mask) != (prrr_value & prrr_mask)) return why = "PRRR does not map TEX-remap indices 1/4/7", failure(errc::invalid);
        constexpr std::uint64_t nmrr_mask = (3u << 8) | (3u << 14) | (3u << 24) | (3u << 30);
        if ((*nmrr & nmrr_mask) != (nmrr_value & nmrr_mask)) return why = "NMRR does not give index 4 NC and 7 WB-WA", failure(errc::invalid);
        if (auto t = r.get("ttbr")) c.coherent_walk = (*t & (ttbr_irgn_wbwa | ttbr_rgn_wbwa)) != 0;
        return c;
    }

    // ---- page-table sharing (formats/README.md, "Config blobs") ----
    /// PROBE_TABLE `sizes` (model ARM): the 4K granule, bit 12.
    static constexpr unsigned sharing_size_bit(const geometry&) noexcept { return 12; }
    /// ATTACH_TABLE config, variant short-descriptor: le32 tcr @4 (TTBCR), le32 prrr @8, le32
    /// nmrr @12, le32 asid @16; bytes 20–63 reserved.
    static void config_to_blob(const register_set& r, std::uint32_t asid, blob& b) noexcept {
        blob_put<std::uint32_t>(b, 4, static_cast<std::uint32_t>(r.get("tcr").value_or(0)));
        blob_put<std::uint32_t>(b, 8, static_cast<std::uint32_t>(r.get("prrr").value_or(0)));
        blob_put<std::uint32_t>(b, 12, static_cast<std::uint32_t>(r.get("nmrr").value_or(0)));
        blob_put<std::uint32_t>(b, 16, asid);
    }
    static result<register_set> config_from_blob(const std::uint8_t* b, std::uint32_t& asid,
                                                 std::string_view& why) noexcept {
        if (!blob_zero_from(b, 20)) return why = "config.reserved", failure(errc::invalid);
        register_set r;
        r.add("tcr", blob_take<std::uint32_t>(b, 4));
        r.add("prrr", blob_take<std::uint32_t>(b, 8));
        r.add("nmrr", blob_take<std::uint32_t>(b, 12));
        asid = blob_take<std::uint32_t>(b, 16);
        return r;
    }

    // ---- options (iopt) ----
    static bool accepts(const options&) { return true; }
    /// `ias`, `oas` (default 32), `coherent` 0|1, `quirks` (comma list: ns, no_perms, mtk_ext, none).
    static result<config> config_from(const options& o) {
        config c;
        auto ias = o.number("ias", 32), oas = o.number("oas", 32), coherent = o.number("coherent", 1);
        if (!ias || !oas || !coherent || *ias > 64 || *oas > 64 || *coherent > 1) return failure(errc::invalid);
        c.ias = static_cast<unsigned>(*ias);
        c.oas = static_cast<unsigned>(*oas);
        c.coherent_walk = *coherent == 1;
        if (auto q = o.text("quirks")) {
            std::string_view s = *q;
            while (!s.empty()) {
                auto comma = s.find(',');
                auto w = s.substr(0, comma);
                if (w == "ns") c.quirks |= v7s_quirk::ns;
                else if (w == "no_perms") c.quirks |= v7s_quirk::no_perms;
                else if (w == "mtk_ext") c.quirks |= v7s_quirk::mtk_ext;
                else if (w != "none" && !w.empty()) return failure(errc::invalid);
                s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
            }
        }
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    static std::vector<config> sample_configs() {
        std::vector<config> v;
        v.push_back(config{});
        config ns{};
        ns.quirks = v7s_quirk::ns;
        v.push_back(ns);
        config small{};
        small.ias = 28;
        v.push_back(small);
        config mtk34{};
        mtk34.oas = 34;
        mtk34.quirks = v7s_quirk::mtk_ext | v7s_quirk::no_perms;
        v.push_back(mtk34);
        return v;
    }
};

static_assert(page_table_format<arm_v7s>);
static_assert(complete_format<arm_v7s>);
static_assert(has_access_flag<arm_v7s> && has_memory_type<arm_v7s>);
static_assert(arm_v7s::item_lg2(1) == arm_v7s::item_lg2(0) + arm_v7s::index_lg2(0), "levels tile the input space");

} // namespace iopgtable
