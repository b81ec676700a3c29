// SPDX-License-Identifier: MIT
// AMD-Vi host tables only: how entries a foreign writer left are read (Next Level values the
// walker does not follow, Next-Level-7 size codes out of a level's range, the 6-level top),
// registers to configuration and back, which page sizes a configuration keeps, and a table
// whose 6 levels span the whole 64-bit input space.
#include <cstdint>
#include <string_view>

#include "support/checks.hpp"
#include "support/format_list.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

using amd = amd_v1;  // not F: the formats unity group has test cases whose F is their TestType
constexpr std::uint64_t pr = 1, ir = std::uint64_t{1} << 61, iw = std::uint64_t{1} << 62;
constexpr std::uint64_t nl(std::uint64_t v) { return v << 9; }

} // namespace

TEST_CASE("amd-v1: Next Level decides table, page or nothing, as the spec's levels allow", "[amd]") {
    const amd_v1_config c{6};
    const std::uint64_t a = 0x12345000;
    // Not present: nothing, whatever else is set.
    CHECK(amd::classify(c, 0, a | ir | iw | nl(0)) == entry_kind::empty);
    for (unsigned level = 1; level <= 5; ++level) {
        INFO("level " << level);
        // A PDE names the spec level of the table below: ours, 0-based.
        CHECK(amd::classify(c, level, a | pr | nl(level)) == entry_kind::table);
        CHECK(amd::table_address(c, level, a | pr | nl(level) | ir) == a);
        // Skipping levels (Next Level below ours) is not followed; above ours is reserved.
        for (unsigned other = 1; other <= 6; ++other)
            if (other != level) CHECK(amd::classify(c, level, a | pr | nl(other)) == entry_kind::empty);
    }
    // Level 0 holds pages only: Next Level 1..6 there is reserved.
    for (unsigned other = 1; other <= 6; ++other) CHECK(amd::classify(c, 0, a | pr | nl(other)) == entry_kind::empty);
    // The top of a 6-level table holds no page.
    CHECK(amd::classify(c, 5, pr | nl(0)) == entry_kind::empty);
    CHECK(amd::classify(c, 5, pr | nl(7)) == entry_kind::empty);
    // Next Level 0 at levels 0..4: a page of the level's own size (512G included: the spec
    // defines it, we only never write it).
    for (unsigned level = 0; level <= 4; ++level) {
        const std::uint64_t oa = std::uint64_t{1} << amd::item_lg2(level);
        CHECK(amd::classify(c, level, oa | pr | nl(0)) == entry_kind::leaf);
        CHECK(amd::leaf_lg2(c, level, oa | pr | nl(0)) == amd::item_lg2(level));
        CHECK(amd::leaf_address(c, level, oa | pr | nl(0)) == oa);
    }
}

TEST_CASE("amd-v1: a Next-Level-7 size code is a page only within its level's range", "[amd]") {
    const amd_v1_config c{6};
    // Level 0: 8K (no bit set) .. 1M (bits 18:12); 2M (bits 19:12) belongs to level 1.
    CHECK(amd::classify(c, 0, pr | nl(7)) == entry_kind::leaf);
    CHECK(amd::leaf_lg2(c, 0, pr | nl(7)) == 13);
    CHECK(amd::classify(c, 0, 0x7f000 | pr | nl(7)) == entry_kind::leaf);
    CHECK(amd::leaf_lg2(c, 0, 0x7f000 | pr | nl(7)) == 20);
    CHECK(amd::classify(c, 0, 0xff000 | pr | nl(7)) == entry_kind::empty);
    // Level 1: its own size coded with Next Level 7 reads as that size; 8K is too small.
    CHECK(amd::classify(c, 1, 0xff000 | pr | nl(7)) == entry_kind::leaf);
    CHECK(amd::leaf_lg2(c, 1, 0xff000 | pr | nl(7)) == 21);
    CHECK(amd::classify(c, 1, pr | nl(7)) == entry_kind::empty);
    // The output address is the code's bits cleared: a 64K page at 0x30000.
    CHECK(amd::leaf_address(c, 0, 0x37000 | pr | nl(7)) == 0x30000);
    // Every address bit set: a size past 2^51 is reserved.
    const std::uint64_t all = bit_range(51, 12);
    CHECK(amd::classify(c, 4, all | pr | nl(7)) == entry_kind::empty);
    // Bits above the address field (U, FC, IR, IW) do not lengthen the code.
    CHECK(amd::leaf_lg2(c, 0, 0x7000 | pr | nl(7) | (std::uint64_t{0xff} << 52)) == 16);
}

TEST_CASE("amd-v1: page sizes a configuration keeps", "[amd]") {
    auto sizes = [](amd_v1_config c) { return amd::make_geometry(c)->pgsize_bitmap; };
    // 4 levels: 4K..256G; level 3 keeps none (512G is never written, and with it go 1T..128T).
    CHECK(sizes(amd_v1_config{4}) == bit_range(38, 12));
    // 5 levels: and 256T..2^51 at level 4 (its own size is kept).
    CHECK(sizes(amd_v1_config{5}) == (bit_range(38, 12) | bit_range(51, 48)));
    // The output size caps them.
    CHECK(sizes(amd_v1_config{5, 40}) == bit_range(38, 12));
    // Leaving out 2M leaves out 4M..512M too; leaving out 4K is refused.
    amd_v1_config no2m{4};
    no2m.pgsize_bitmap = ~(std::uint64_t{1} << 21);
    CHECK(sizes(no2m) == (bit_range(20, 12) | bit_range(38, 30)));
    amd_v1_config no4k{4};
    no4k.pgsize_bitmap = ~std::uint64_t{0x1000};
    CHECK(amd::make_geometry(no4k).error() == errc::invalid);
}

TEST_CASE("amd-v1: DTE registers to configuration and back", "[amd]") {
    for (const auto& cfg : amd::sample_configs()) {
        const auto g = amd::make_geometry(cfg);
        REQUIRE(g.ok());
        const auto regs = amd::registers(cfg, *g, pa_t{0xabcde000});
        std::string_view why;
        auto back = amd::config_from_registers(regs, why);
        REQUIRE(back.ok());
        CHECK(back->levels == cfg.levels);
        CHECK(back->track_dirty == cfg.track_dirty);
        // dte0 holds the same Mode, HAD and root.
        const std::uint64_t dte0 = *regs.get("dte0");
        CHECK(((dte0 >> 9) & 7) == cfg.levels);
        CHECK(((dte0 >> 7) & 3) == (cfg.track_dirty ? 3u : 0u));
        CHECK((dte0 & bit_range(51, 12)) == 0xabcde000);
        CHECK((dte0 & 3) == 3);  // V, TV
    }
    std::string_view why;
    register_set r;
    CHECK(amd::config_from_registers(r, why).error() == errc::invalid);
    CHECK(why == "mode missing");
    for (std::uint64_t mode : {0u, 7u}) {
        register_set m;
        m.add("mode", mode);
        CHECK(amd::config_from_registers(m, why).error() == errc::invalid);
    }
    register_set had;
    had.add("mode", 4);
    had.add("had", 1);
    CHECK(amd::config_from_registers(had, why).error() == errc::invalid);
    register_set root;
    root.add("mode", 4);
    root.add("root", 0x1234);
    CHECK(amd::config_from_registers(root, why).error() == errc::invalid);
    register_set high;
    high.add("mode", 4);
    high.add("root", std::uint64_t{1} << 52);
    CHECK(amd::config_from_registers(high, why).error() == errc::range);
}

TEST_CASE("amd-v1: six levels map and unmap at both ends of the 64-bit input space", "[amd]") {
    host_heap mem;
    auto created = page_table<amd, host_heap>::create(amd_v1_config{6}, mem);
    REQUIRE(created.ok());
    auto pt = std::move(created).value();
    CHECK(pt.geo().ias == 64);
    CHECK(pt.top_table_bytes() == 4096);  // a whole table, 4K aligned as the DTE requires
    const std::uint64_t top = ~std::uint64_t{0} - 0xfff, big = std::uint64_t{1} << 51;
    REQUIRE(pt.map(ipa_t{top}, pa_t{0x5000}, length_t{0x1000}, prot::read).ok());
    REQUIRE(pt.map(ipa_t{big}, pa_t{big}, length_t{big}, prot::read | prot::write).ok());
    CHECK(pt.iova_to_phys(ipa_t{~std::uint64_t{0}})->value == 0x5fff);
    const auto w = pt.lookup(ipa_t{big + 42});
    CHECK(w.status == walk_status::mapped);
    CHECK(w.size_lg2 == 51);
    CHECK(w.level == 4);
    CHECK(w.accesses == 2);  // the top table and one level-4 copy of the page
    CHECK(pt.iova_to_phys(ipa_t{top - 1}) == std::nullopt);
    // Every input address is in range: an unmap of everything, in two halves.
    const std::uint64_t half = std::uint64_t{1} << 63;
    auto lo = pt.unmap(ipa_t{0}, length_t{half});
    auto hi = pt.unmap(ipa_t{half}, length_t{half});
    REQUIRE(lo.ok());
    REQUIRE(hi.ok());
    CHECK(lo->value + hi->value == big + 0x1000);
    pt.reclaim();
    CHECK(pt.table_bytes() == pt.top_table_bytes());
}
