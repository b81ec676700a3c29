// SPDX-License-Identifier: MIT
#pragma once
/// @file vtd_sl.hpp
/// Intel VT-d second stage, the profile half (engine/profile.hpp; the walker half is
/// vtd_sl_walker.hpp): what the nested walks, the sharing requests, `iopt` and the suites learn
/// about the format. Spec sections followed (Intel VT-d Architecture Specification, rev. 4.x/5.x):
/// - 9.3 context entry / 9.6 scalable-mode PASID-table entry: AW (1 = 39, 2 = 48, 3 = 57 bits),
///   SSPTPTR; 11.4.2 capability register: SAGAW, SLLPS (bit 34 = 2M, bit 35 = 1G).
#include <cstdint>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "sharing_models.hpp"
#include "vtd_sl_walker.hpp"

namespace iopgtable {

struct vtd_sl : vtd_sl_walker {
    /// Page-table sharing registry (formats/README.md): model X86 (2), variant VT-d second-stage (2).
    /// A second-stage table is the host's: never offered for guest tables.
    static constexpr std::uint32_t sharing_model = sharing::model_x86, sharing_variant = sharing::x86_vtd_second_stage;
    static constexpr bool guest_shareable = false;
    static bool matches_registers(const register_set&) noexcept { return true; }

    /// The context/PASID-entry AW value of a table with `levels` levels (3 → 1, 4 → 2, 5 → 3).
    static constexpr unsigned aw_field(unsigned levels) noexcept { return levels - 2; }

    // ---- registers (9.3 / 9.6) ----
    /// `root`: the second-stage table pointer (SLPTPTR / SSPTPTR, 4K aligned); `aw`: the
    /// context or PASID entry's AW value. `geo` must come from `c`.
    static register_set registers(const config&, const geometry& g, pa_t root) noexcept {
        register_set r;
        r.add("root", root.value);
        r.add("aw", aw_field(g.levels));
        return r;
    }

    /// A configuration from `aw` (1, 2, 3; required) and, when present, `root` (4K aligned,
    /// below 2^52). sllps, snoop and oas are not in these registers: they get their defaults.
    /// On refusal, `why` names the field.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        const auto aw = r.get("aw");
        if (!aw) return why = "aw missing", failure(errc::invalid);
        if (*aw < 1 || *aw > 3) return why = "AW not 1, 2 or 3 (39/48/57-bit)", failure(errc::invalid);
        if (const auto root = r.get("root")) {
            if ((*root & low_mask(granule_lg2)) != 0) return why = "root not 4K aligned", failure(errc::invalid);
            if ((*root >> max_oas) != 0) return why = "root above 52 bits", failure(errc::range);
        }
        config c;
        c.aw = 30 + 9 * static_cast<unsigned>(*aw);
        return c;
    }

    // ---- options (iopt, vectors) ----
    /// One variant: accepts anything but a granule other than 4k.
    static bool accepts(const options& o) { return o.text("granule").value_or("4k") == "4k"; }
    /// `aw` 39|48|57 (default 48), `sllps` 0|1|3 (default 3), flag `snoop`, `oas` 39..52
    /// (default 52). Errors: errc::invalid for malformed or refused values.
    static result<config> config_from(const options& o) {
        config c;
        auto aw = o.number("aw", 48), sllps = o.number("sllps", 3), oas = o.number("oas", max_oas);
        if (!aw || !sllps || !oas) return failure(errc::invalid);
        if (*aw > 64 || *sllps > 3 || *oas > 64) return failure(errc::invalid);
        c.aw = static_cast<unsigned>(*aw);
        c.sllps = static_cast<unsigned>(*sllps);
        c.oas = static_cast<unsigned>(*oas);
        c.snoop = o.flag("snoop");
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    /// Configurations the conformance suite runs: every AW with all superpages, with none
    /// (and snooping), with 2M only, and a narrow host address width.
    static std::vector<config> sample_configs() {
        std::vector<config> v;
        for (unsigned aw : {39u, 48u, 57u}) {
            v.push_back(config{aw, 3, false, max_oas});
            v.push_back(config{aw, 0, true, max_oas});
            v.push_back(config{aw, vtd_sllps::size_2m, false, max_oas});
        }
        v.push_back(config{48, 3, true, 39});
        v.push_back(config{57, 3, false, 46});
        return v;
    }
};

static_assert(page_table_format<vtd_sl>);
static_assert(complete_format<vtd_sl>);
static_assert(has_dirty_tracking<vtd_sl>);
static_assert(vtd_sl::item_lg2(vtd_sl::max_levels - 1) + vtd_sl::bits_per_level == 57, "levels tile a 57-bit input space");
static_assert([] {
    constexpr auto g3 = vtd_sl::make_geometry(vtd_sl_config{39, 0});
    constexpr auto g5 = vtd_sl::make_geometry(vtd_sl_config{57, 3});
    return g3.ok() && g3->levels == 3 && g3->pgsize_bitmap == 0x1000 && g5.ok() && g5->levels == 5 &&
           g5->pgsize_bitmap == 0x40201000 && !vtd_sl::make_geometry(vtd_sl_config{48, 2}).ok();
}());

} // namespace iopgtable
