// SPDX-License-Identifier: MIT
#pragma once
/// @file arm_lpae.hpp
/// ARM LPAE, the profile half (engine/profile.hpp; the walker half is arm_lpae_walker.hpp):
/// what the nested walks, the sharing requests, `iopt` and the suites learn about the format.
/// Spec sections followed (Arm ARM, DDI 0487):
/// - D19 registers: TCR_EL1 (T0SZ, IRGN0, ORGN0, SH0, TG0, EPD1, IPS, HA, HD), MAIR_EL1,
///   VTCR_EL2 (T0SZ, SL0, IRGN0, ORGN0, SH0, TG0, PS, RES1 bit 31).
/// - D8.4 access flag and memory attributes (MAIR indices at stage 1, D8.5.5 MemAttr and
///   FEAT_S2FWB at stage 2); pseudocode AArch64.S1Translate / S2Translate for the level an
///   out-of-range input faults at.
#include <cstdint>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "arm_lpae_walker.hpp"
#include "sharing_models.hpp"

namespace iopgtable {

template <lpae_stage Stage, unsigned GranuleLg2>
struct arm_lpae : arm_lpae_walker<Stage, GranuleLg2> {
    using walker = arm_lpae_walker<Stage, GranuleLg2>;
    using word = typename walker::word;
    using config = typename walker::config;
    using af = typename walker::af;
    using attr_index = typename walker::attr_index;
    using mem_attr = typename walker::mem_attr;
    using walker::mair_value;
    using walker::compute_layout, walker::make_geometry, walker::max_ias, walker::oas_encodable;

    /// Leaf permissions as the Arm ARM decides them per stage (engine/format.hpp).
    static constexpr permission_rule leaf_permissions =
        Stage == lpae_stage::s1 ? permission_rule::arm_stage1 : permission_rule::arm_stage2;
    /// An input beyond the IAS is a translation fault at Arm's level 0 (pseudocode
    /// AArch64.S1Translate / S2Translate: VAIsOutOfRange, IPAIsOutOfRange), our level 3 for
    /// every granule, above the top level when the walk starts lower (IAS 39 with 4K: top level
    /// 2; the 64K granule has no level-0 table but still reports 0).
    static constexpr unsigned input_fault_level(const geometry&) noexcept { return 3; }
    static constexpr const char* granule_name = GranuleLg2 == 12 ? "4k" : GranuleLg2 == 14 ? "16k" : "64k";
    /// Page-table sharing registry (formats/README.md): model ARM (1), variant LPAE 64-bit (1).
    /// Only stage-1 tables are offered to guests.
    static constexpr std::uint32_t sharing_model = sharing::model_arm, sharing_variant = sharing::arm_lpae64;
    static constexpr bool guest_shareable = Stage == lpae_stage::s1;

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

    // ---- registers (D19: TCR_EL1, MAIR_EL1, VTCR_EL2) ----
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
