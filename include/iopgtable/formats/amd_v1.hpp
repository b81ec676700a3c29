// SPDX-License-Identifier: MIT
#pragma once
/// @file amd_v1.hpp
/// AMD-Vi host page tables ("v1"), the profile half (engine/profile.hpp; the walker half is
/// amd_v1_walker.hpp): what the nested walks, the sharing requests, `iopt` and the suites learn
/// about the format. Spec sections followed (AMD I/O Virtualization Technology (IOMMU)
/// Specification, #48882, rev. 3.x):
/// - 2.2.2.1 device table entry, quadword 0: V 0, TV 1, HAD 8:7, Mode 11:9, Host Page Table
///   Root Pointer 51:12, IR 61, IW 62.
#include <cstdint>
#include <string_view>
#include <vector>

#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "amd_v1_walker.hpp"
#include "sharing_models.hpp"

namespace iopgtable {

struct amd_v1 : amd_v1_walker {
    /// Page-table sharing registry (formats/README.md): model X86 (2), variant AMD-Vi host
    /// table (3). The host's table: never offered for guest tables.
    static constexpr std::uint32_t sharing_model = sharing::model_x86, sharing_variant = sharing::x86_amd_v1;
    static constexpr bool guest_shareable = false;
    static bool matches_registers(const register_set&) noexcept { return true; }

    // ---- registers (2.2.2.1) ----
    /// `root`: Host Page Table Root Pointer (4K aligned); `mode`: DTE Mode (the levels); `had`:
    /// 3 with dirty tracking, else 0; `dte0`: quadword 0 of the device table entry, V | TV |
    /// HAD | Mode | root | IR | IW (the DTE's IR/IW permit; the leaves decide).
    static register_set registers(const config& c, const geometry& g, pa_t root) noexcept {
        const std::uint64_t had = c.track_dirty ? 3 : 0;
        register_set r;
        r.add("root", root.value);
        r.add("mode", g.levels);
        r.add("had", had);
        r.add("dte0", 0x3 | had << 7 | std::uint64_t{g.levels} << 9 | (root.value & address_mask) | read_bit::mask |
                          write_bit::mask);
        return r;
    }

    /// A configuration from `mode` (1..6; required), `had` (0 or 3, default 0) and, when
    /// present, `root` (4K aligned, below 2^52). oas and FC get their defaults. On refusal,
    /// `why` names the field.
    static result<config> config_from_registers(const register_set& r, std::string_view& why) noexcept {
        const auto mode = r.get("mode");
        if (!mode) return why = "mode missing", failure(errc::invalid);
        if (*mode < 1 || *mode > max_levels) return why = "Mode not 1..6 (0: no translation, 7: reserved)", failure(errc::invalid);
        const auto had = r.get("had").value_or(0);
        if (had != 0 && had != 3) return why = "HAD not 00b or 11b", failure(errc::invalid);
        if (const auto root = r.get("root")) {
            if ((*root & low_mask(granule_lg2)) != 0) return why = "root not 4K aligned", failure(errc::invalid);
            if ((*root >> max_oas) != 0) return why = "root above 52 bits", failure(errc::range);
        }
        config c;
        c.levels = static_cast<unsigned>(*mode);
        c.track_dirty = had == 3;
        return c;
    }

    // ---- options (iopt, vectors) ----
    /// One variant: accepts anything but a granule other than 4k.
    static bool accepts(const options& o) { return o.text("granule").value_or("4k") == "4k"; }
    /// `levels` 1..6 (default 4) or, equivalently, `mode` (the DTE's Mode; both given: they
    /// must agree); `oas` 32..52 (default 52); flags `coherent` (FC) and `dirty`.
    /// Errors: errc::invalid for malformed or refused values.
    static result<config> config_from(const options& o) {
        config c;
        auto levels = o.number("levels", 4), oas = o.number("oas", max_oas);
        if (!levels || !oas || *levels > 64 || *oas > 64) return failure(errc::invalid);
        if (o.has("mode")) {
            auto mode = o.number("mode", 0);
            if (!mode || *mode > 64 || (o.has("levels") && *levels != *mode)) return failure(errc::invalid);
            levels = *mode;
        }
        c.levels = static_cast<unsigned>(*levels);
        c.oas = static_cast<unsigned>(*oas);
        c.coherent = o.flag("coherent");
        c.track_dirty = o.flag("dirty");
        if (auto g = make_geometry(c); !g) return failure(g.error());
        return c;
    }

    /// Configurations the conformance suite runs: one level (a single table), 3, 4 and 6 levels
    /// (the whole 64-bit input space; it holds 5 levels' page sizes too), FC and dirty
    /// tracking, a narrow output, and the pages x86 CPUs use (4K/2M/1G) alone.
    static std::vector<config> sample_configs() {
        std::vector<config> v;
        for (unsigned levels : {1u, 3u, 4u, 6u}) v.push_back(config{levels});
        v.push_back(config{3, max_oas, true, true});
        v.push_back(config{4, 40, false, true});
        v.push_back(config{4, max_oas, false, false, 0x40201000});
        return v;
    }
};

static_assert(page_table_format<amd_v1>);
static_assert(complete_format<amd_v1>);
static_assert(has_dirty_tracking<amd_v1>);
static_assert([] {
    constexpr auto g1 = amd_v1::make_geometry(amd_v1_config{1});
    constexpr auto g3 = amd_v1::make_geometry(amd_v1_config{3});
    constexpr auto g6 = amd_v1::make_geometry(amd_v1_config{6});
    // 16K page: Next Level 7, bit 12 set, bit 13 clear.
    constexpr auto w16k = amd_v1::make_leaf(amd_v1_config{}, 0, 14, 0x8000, prot::read);
    return g1.ok() && g1->ias == 21 && g1->pgsize_bitmap == 0x1ff000 && g3.ok() && g3->ias == 39 &&
           g3->pgsize_bitmap == 0x7ffffff000 && g6.ok() && g6->ias == 64 &&
           g6->pgsize_bitmap == (bit_range(51, 12) & ~bit_range(47, 39)) && w16k == 0x2000000000009e01 &&
           amd_v1::leaf_lg2(amd_v1_config{}, 0, w16k) == 14 && !amd_v1::make_geometry(amd_v1_config{7}).ok();
}());

} // namespace iopgtable
