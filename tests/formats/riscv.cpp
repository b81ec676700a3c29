// SPDX-License-Identifier: MIT
// RISC-V IOMMU tables only: how entries a foreign writer left are read (the encodings the
// Privileged spec, Svnapot and Svpbmt make page faults), Svnapot 64K leaves through the engine,
// the G-stage's 16 KiB root and its U rule, registers and the ATTACH_TABLE blob to
// configuration and back, and the `mode` option.
#include <cstdint>
#include <string>
#include <string_view>

#include <boost/hana/type.hpp>

#include "support/checks.hpp"
#include "support/format_list.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

constexpr std::uint64_t V = 1, R = 2, W = 4, X = 8, U = 0x10, A = 0x40, D = 0x80;
constexpr std::uint64_t N = std::uint64_t{1} << 63, NC = std::uint64_t{1} << 61, IO = std::uint64_t{2} << 61;
constexpr std::uint64_t ppn(std::uint64_t pa) { return (pa >> 12) << 10; }

} // namespace

TEST_CASE("riscv: what the walk reads as table, leaf or nothing", "[riscv]") {
    using F = riscv_s1;
    riscv_config c{5};
    const std::uint64_t a = 0x12345000;
    for (unsigned level = 0; level < 5; ++level) {
        INFO("level " << level);
        CHECK(F::classify(c, level, ppn(a) | R | W | X | U | A | D) == entry_kind::empty);  // V clear
        // A pointer: R = W = X = 0; none at level 0; N or PBMT in a pointer are reserved.
        CHECK(F::classify(c, level, ppn(a) | V) == (level == 0 ? entry_kind::empty : entry_kind::table));
        CHECK(F::classify(c, level, ppn(a) | V | N) == entry_kind::empty);
        CHECK(F::classify(c, level, ppn(a) | V | NC) == entry_kind::empty);
        if (level > 0) CHECK(F::table_address(c, level, ppn(a) | V) == a);
        // Bits 60:54 are reserved in every PTE.
        CHECK(F::classify(c, level, ppn(a) | V | (std::uint64_t{1} << 54)) == entry_kind::empty);
        // W without R is reserved; X alone or R alone is a leaf (aligned to the level).
        const std::uint64_t oa = std::uint64_t{1} << F::item_lg2(level);
        CHECK(F::classify(c, level, ppn(oa) | V | W | U | A) == entry_kind::empty);
        CHECK(F::classify(c, level, ppn(oa) | V | X | U | A) == entry_kind::leaf);
        CHECK(F::classify(c, level, ppn(oa) | V | R | U | A) == entry_kind::leaf);
        CHECK(F::leaf_address(c, level, ppn(oa) | V | R) == oa);
        // A misaligned superpage is a page fault.
        if (level > 0) CHECK(F::classify(c, level, ppn(oa + 0x1000) | V | R) == entry_kind::empty);
    }
    // PBMT: 3 is reserved; NC and IO need Svpbmt.
    CHECK(F::classify(c, 0, ppn(a) | V | R | NC) == entry_kind::empty);
    c.svpbmt = true;
    CHECK(F::classify(c, 0, ppn(a) | V | R | NC) == entry_kind::leaf);
    CHECK(F::classify(c, 0, ppn(a) | V | R | IO) == entry_kind::leaf);
    CHECK(F::classify(c, 0, ppn(a) | V | R | NC | IO) == entry_kind::empty);
    CHECK(F::leaf_memory_type(c, 0, ppn(a) | V | R | IO) == memory_type::device);
    CHECK(F::leaf_memory_type(c, 0, ppn(a) | V | R | NC) == memory_type::non_cacheable);
    CHECK(F::leaf_memory_type(c, 0, ppn(a) | V | R) == memory_type::write_back);
    // N: only a level-0 leaf with ppn[3:0] = 1000b, and only with Svnapot.
    const std::uint64_t n64 = ppn(0x30000) | ppn(0x8000) | V | R | N;
    CHECK(F::classify(c, 0, n64) == entry_kind::leaf);
    CHECK(F::leaf_lg2(c, 0, n64) == 16);
    CHECK(F::leaf_address(c, 0, n64) == 0x30000);
    CHECK(F::classify(c, 0, ppn(0x30000) | ppn(0x4000) | V | R | N) == entry_kind::empty);
    CHECK(F::classify(c, 0, ppn(0x30000) | V | R | N) == entry_kind::empty);
    CHECK(F::classify(c, 1, ppn(0x200000) | ppn(0x8000) | V | R | N) == entry_kind::empty);
    c.svnapot = false;
    CHECK(F::classify(c, 0, n64) == entry_kind::empty);
    // Every G-stage access is a user access: a G-stage leaf without U is a fault.
    CHECK(riscv_s2::classify(riscv_config{}, 0, ppn(a) | V | R | A) == entry_kind::empty);
    CHECK(riscv_s2::classify(riscv_config{}, 0, ppn(a) | V | R | U | A) == entry_kind::leaf);
    CHECK(riscv_s1::classify(riscv_config{}, 0, ppn(a) | V | R | A) == entry_kind::leaf);  // supervisor page
    CHECK(riscv_s1::leaf_prot(riscv_config{}, 0, ppn(a) | V | R | A) == (prot::read | prot::noexec | prot::priv | prot::cache));
}

TEST_CASE("riscv: a 64K Svnapot leaf is 16 identical PTEs, split by a partial unmap", "[riscv]") {
    using F = riscv_s1;
    host_heap mem;
    auto created = page_table<F, host_heap>::create(riscv_config{3}, mem);
    REQUIRE(created.ok());
    auto pt = std::move(created).value();
    CHECK(pt.geo().ias == 38);
    REQUIRE(pt.map(iova_t{0x40000}, pa_t{0x123450000}, length_t{0x10000}, prot::read | prot::write).ok());
    const auto w = pt.lookup(iova_t{0x4abcd});
    CHECK(w.status == walk_status::mapped);
    CHECK(w.size_lg2 == 16);
    CHECK(w.level == 0);
    CHECK(pt.iova_to_phys(iova_t{0x4abcd})->value == 0x12345abcd);
    const std::uint64_t want = ppn(0x123450000) | ppn(0x8000) | N | V | R | W | X | U | A | D;
    for (std::uint64_t va = 0x40000; va < 0x50000; va += 0x1000) {
        const auto leaf = pt.lookup(iova_t{va});
        REQUIRE(leaf.status == walk_status::mapped);
        CHECK(leaf.raw == want);
    }
    // Unmapping one 4K page splits the 64K leaf into 4K pages; the other fifteen stay.
    auto un = pt.unmap(iova_t{0x43000}, length_t{0x1000}, unmap_mode::split);
    REQUIRE(un.ok());
    CHECK(un->value == 0x1000);
    CHECK(pt.iova_to_phys(iova_t{0x43000}) == std::nullopt);
    CHECK(pt.iova_to_phys(iova_t{0x44010})->value == 0x123454010);
    CHECK(pt.lookup(iova_t{0x44010}).size_lg2 == 12);
    CHECK((pt.lookup(iova_t{0x44010}).raw & N) == 0);
}

TEST_CASE("riscv: the G-stage root is 2048 entries and the input two bits wider", "[riscv]") {
    using F = riscv_s2;
    for (unsigned levels : {3u, 4u, 5u}) {
        const auto g = F::make_geometry(riscv_config{levels});
        REQUIRE(g.ok());
        CHECK(g->top_index_lg2 == 11);
        CHECK(g->ias == 12 + 9 * levels + 2);
        CHECK(riscv_s1::make_geometry(riscv_config{levels})->ias == 12 + 9 * levels - 1);
    }
    host_heap mem;
    auto created = page_table<F, host_heap>::create(riscv_config{3}, mem);
    REQUIRE(created.ok());
    auto pt = std::move(created).value();
    CHECK(pt.top_table_bytes() == 16384);
    CHECK(pt.root().value % 16384 == 0);  // iohgatp.PPN's root alignment
    const std::uint64_t last = (std::uint64_t{1} << 41) - 0x1000;
    REQUIRE(pt.map(ipa_t{last}, pa_t{0x7000}, length_t{0x1000}, prot::read).ok());
    CHECK(pt.iova_to_phys(ipa_t{last + 0xfff})->value == 0x7fff);
    CHECK(!pt.map(ipa_t{last + 0x1000}, pa_t{0x8000}, length_t{0x1000}, prot::read).ok());
    // PRIV cannot clear U in a G-stage leaf.
    REQUIRE(pt.map(ipa_t{0}, pa_t{0x9000}, length_t{0x1000}, prot::read | prot::priv).ok());
    CHECK((pt.lookup(ipa_t{0}).raw & U) != 0);
}

TEST_CASE("riscv: registers and the ATTACH_TABLE blob to configuration and back", "[riscv]") {
    for (const auto& cfg : riscv_s1::sample_configs()) {
        const auto g = riscv_s1::make_geometry(cfg);
        REQUIRE(g.ok());
        const auto regs = riscv_s1::registers(cfg, *g, pa_t{0xabcde000});
        CHECK(*regs.get("iosatp") == ((std::uint64_t{cfg.levels} + 5) << 60 | 0xabcde));
        std::string_view why;
        auto back = riscv_s1::config_from_registers(regs, why);
        REQUIRE(back.ok());
        CHECK(back->levels == cfg.levels);
        CHECK(back->svnapot == cfg.svnapot);
        CHECK(back->svpbmt == cfg.svpbmt);
        CHECK(back->track_dirty == cfg.track_dirty);
        blob b{};
        riscv_s1::config_to_blob(regs, 0x12345, b);
        std::uint32_t pscid = 0;
        auto from_blob = riscv_s1::config_from_blob(b.data(), pscid, why);
        REQUIRE(from_blob.ok());
        CHECK(pscid == 0x12345);
        auto again = riscv_s1::config_from_registers(*from_blob, why);
        REQUIRE(again.ok());
        CHECK(again->levels == cfg.levels);
        CHECK(again->svpbmt == cfg.svpbmt);
        CHECK(again->track_dirty == cfg.track_dirty);
    }
    std::string_view why;
    register_set none;
    CHECK(riscv_s1::config_from_registers(none, why).error() == errc::invalid);
    for (std::uint64_t mode : {0u, 1u, 7u, 11u}) {
        register_set m;
        m.add("mode", mode);
        CHECK(riscv_s1::config_from_registers(m, why).error() == errc::invalid);
    }
    register_set disagree;
    disagree.add("mode", 8);
    disagree.add("iosatp", std::uint64_t{9} << 60);
    CHECK(riscv_s1::config_from_registers(disagree, why).error() == errc::invalid);
    register_set reserved;
    reserved.add("iosatp", std::uint64_t{9} << 60 | std::uint64_t{1} << 44);
    CHECK(riscv_s1::config_from_registers(reserved, why).error() == errc::invalid);
    register_set misaligned;  // a G-stage root 4K- but not 16K-aligned
    misaligned.add("iohgatp", std::uint64_t{9} << 60 | 0x12345);
    CHECK(riscv_s2::config_from_registers(misaligned, why).error() == errc::invalid);
    CHECK(why == "root not 16K aligned");
    // The blob's reserved bytes, MODE and flags.
    blob b{};
    blob_put<std::uint32_t>(b, 4, 9);
    std::uint32_t tag = 0;
    CHECK(riscv_s1::config_from_blob(b.data(), tag, why).ok());
    b[16] = 1;
    CHECK(riscv_s1::config_from_blob(b.data(), tag, why).error() == errc::invalid);
    CHECK(why == "config.reserved");
    b[16] = 0;
    blob_put<std::uint32_t>(b, 12, 8);
    CHECK(riscv_s1::config_from_blob(b.data(), tag, why).error() == errc::invalid);
    CHECK(why == "config.flags");
    blob_put<std::uint32_t>(b, 12, 0);
    blob_put<std::uint32_t>(b, 4, 11);
    CHECK(riscv_s1::config_from_blob(b.data(), tag, why).error() == errc::invalid);
    CHECK(why == "config.mode");
}

TEST_CASE("riscv: --mode names the stage's own modes", "[riscv]") {
    auto levels = [](auto f, std::string_view mode) -> int {
        using F = typename decltype(f)::type;
        options o;
        o.values.emplace(std::string("mode"), std::string(mode));
        auto c = F::config_from(o);
        return c.ok() ? static_cast<int>(c->levels) : -1;
    };
    CHECK(levels(boost::hana::type_c<riscv_s1>, "sv39") == 3);
    CHECK(levels(boost::hana::type_c<riscv_s1>, "sv48") == 4);
    CHECK(levels(boost::hana::type_c<riscv_s1>, "sv57") == 5);
    CHECK(levels(boost::hana::type_c<riscv_s1>, "sv48x4") == -1);
    CHECK(levels(boost::hana::type_c<riscv_s1>, "sv32") == -1);
    CHECK(levels(boost::hana::type_c<riscv_s2>, "sv39x4") == 3);
    CHECK(levels(boost::hana::type_c<riscv_s2>, "sv57x4") == 5);
    CHECK(levels(boost::hana::type_c<riscv_s2>, "sv48") == -1);
    CHECK(levels(boost::hana::type_c<riscv_s2>, "sv48x") == -1);
}
