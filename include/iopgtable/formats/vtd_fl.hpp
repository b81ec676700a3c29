// SPDX-License-Identifier: MIT
#pragma once
/// @file vtd_fl.hpp
/// Intel VT-d first stage, the profile half (engine/profile.hpp; the walker half is
/// vtd_fl_walker.hpp): what the nested walks, the sharing requests, `iopt` and the suites learn
/// about the format. Spec sections followed (Intel VT-d Architecture Specification rev. 4.x/5.x):
/// - 9.6 scalable-mode PASID-table entry (FSPTPTR, FLPM 0 = 4-level, 1 = 5-level);
///   11.4.2 capability register (FL1GP bit 56, FL5LP bit 60).
/// - formats/README.md "Config blobs": the ATTACH_TABLE config of variant VT-d first stage.
#include <cstdint>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "sharing_models.hpp"
#include "vtd_fl_walker.hpp"

namespace iopgtable {

struct vtd_fl : vtd_fl_walker {
    /// Page-table sharing registry (formats/README.md): model X86 (2), variant VT-d first-stage (1).
    static constexpr std::uint32_t sharing_model = sharing::model_x86, sharing_variant = sharing::x86_vtd_first_stage;
    static constexpr bool guest_shareable = true;
    static bool matches_registers(const register_set&) noexcept { return true; }

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
