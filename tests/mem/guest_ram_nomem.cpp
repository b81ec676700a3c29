// SPDX-License-Identifier: MIT
// Bounded guest RAM: when the table pool runs out part-way through an operation, the
// operation fails with nomem and the table is exactly as before (leaves, table bytes, and the
// pool's bytes in use). Pools grow one table at a time until the operation fits.
#include <algorithm>

#include "support/checks.hpp"
#include "support/format_list.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

/// The largest table pool tried. Each try's RAM is exactly its pool: a 16 MiB RAM per try made
/// one format's split case take 26 s under ASan (fresh shadow and page faults each time).
constexpr std::uint64_t ram_bytes = std::uint64_t{16} << 20;

/// The pool after `pool`: one smallest table more for the first 64 tries, then 1/16 more (the
/// split case of amd-v1's 6-level sample needs 1,031 tables: one try per table took 1,031 tries).
inline std::uint64_t next_pool(std::uint64_t pool, std::uint64_t first, std::uint64_t table) {
    const std::uint64_t step = pool - first < 64 * table ? table : (pool / 16 + table - 1) / table * table;
    return pool + step;
}

/// Smallest table below the top, as the pool charges it.
template <class F>
std::uint64_t smallest_table(const geometry& g) {
    std::uint64_t m = ~std::uint64_t{0};
    for (unsigned l = 0; l + 1 < g.levels; ++l) m = std::min(m, charged_bytes(level_table_bytes<F>(l)));
    return m;
}

} // namespace

TEMPLATE_LIST_TEST_CASE("out of guest-RAM table memory, map fails with nomem and changes nothing",
                        "[guest_ram][nomem]", format_list) {
    using F = TestType;
    using table = page_table<F, guest_ram>;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        if (s.geo.levels < 2) continue;  // a single-level table never allocates
        const std::uint64_t small = smallest_page(s.geo);
        const std::uint64_t root = charged_bytes(std::uint64_t{sizeof(typename F::word)} << s.geo.top_index_lg2);
        // Two smallest pages either side of the boundary between the first two top-level
        // entries: a chain of tables under each.
        const std::uint64_t boundary = std::uint64_t{1} << F::item_lg2(s.geo.levels - 1);
        REQUIRE(boundary + small <= ias_end(s.geo));
        const std::uint64_t va = boundary - small, len = 2 * small;
        int failures = 0;
        bool mapped = false;
        for (std::uint64_t pool = root; !mapped && pool < ram_bytes; pool += smallest_table<F>(s.geo)) {
            INFO("pool 0x" << std::hex << pool);
            guest_ram ram{pool, pa_t{0}};  // all of it the table pool
            auto created = table::create(s.cfg, ram);
            REQUIRE(created.ok());
            auto pt = std::move(created).value();
            const std::uint64_t in_use = ram.bytes_in_use(), tables = pt.table_bytes();
            auto r = pt.map(in_addr<F>(va), pa_t{small}, length_t{len}, prot::read | prot::write);
            if (r.ok()) {
                mapped = true;
                CHECK(translation_mismatch(pt, va, small, len) == "");
                CHECK(pt.unmap(in_addr<F>(va), length_t{len})->value == len);
                pt.reclaim();
                CHECK(ram.bytes_in_use() == in_use);
                break;
            }
            ++failures;
            CHECK(to_string(r.error()) == "nomem");
            CHECK(dump(pt).empty());
            CHECK(ram.bytes_in_use() == in_use);
            CHECK(pt.table_bytes() == tables);
            CHECK(!pt.iova_to_phys(in_addr<F>(va)));
        }
        CHECK(mapped);
        // At least the empty pool and a pool holding some but not all of the tables failed.
        CHECK(failures >= 2);
    }
}

TEMPLATE_LIST_TEST_CASE("out of guest-RAM table memory, a splitting unmap fails with nomem and changes nothing",
                        "[guest_ram][nomem][split]", format_list) {
    using F = TestType;
    using table = page_table<F, guest_ram>;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        if (big == small) continue;  // nothing to split
        REQUIRE(ias_end(s.geo) / 4 >= big);
        // Cut the inside out of one largest page: both ends split down to the smallest pages.
        const std::uint64_t x = big, pa = 2 * big;
        int failures = 0;
        bool split = false;
        const std::uint64_t first = charged_bytes(std::uint64_t{sizeof(typename F::word)} << s.geo.top_index_lg2);
        for (std::uint64_t pool = first;
             !split && pool < ram_bytes; pool = next_pool(pool, first, smallest_table<F>(s.geo))) {
            INFO("pool 0x" << std::hex << pool);
            guest_ram ram{pool, pa_t{0}};  // all of it the table pool
            auto created = table::create(s.cfg, ram);
            REQUIRE(created.ok());
            auto pt = std::move(created).value();
            auto m = pt.map(in_addr<F>(x), pa_t{pa}, length_t{big}, prot::read);
            if (!m.ok()) {
                CHECK(to_string(m.error()) == "nomem");
                CHECK(dump(pt).empty());
                continue;
            }
            const auto before = dump(pt);
            const std::uint64_t in_use = ram.bytes_in_use(), tables = pt.table_bytes();
            auto r = pt.unmap(in_addr<F>(x + small), length_t{big - 2 * small}, unmap_mode::split);
            if (r.ok()) {
                split = true;
                CHECK(r->value == big - 2 * small);
                CHECK(pt.iova_to_phys(in_addr<F>(x + 42))->value == pa + 42);
                CHECK(pt.iova_to_phys(in_addr<F>(x + big - 1))->value == pa + big - 1);
                CHECK(unmapped_mismatch(pt, x + small, big - 2 * small) == "");
                break;
            }
            ++failures;
            CHECK(to_string(r.error()) == "nomem");
            CHECK(dump_difference(dump(pt), before) == "");
            CHECK(ram.bytes_in_use() == in_use);
            CHECK(pt.table_bytes() == tables);
            CHECK(translation_mismatch(pt, x, pa, big) == "");
        }
        CHECK(split);
        if (s.geo.levels > 1) CHECK(failures >= 1);  // a single-level table splits in place
    }
}

TEST_CASE("guest_ram::clear gives back a RAM that behaves as a new one, and only when no table is in use",
          "[guest_ram]") {
    using F = arm_lpae_s1_4k;
    const auto cfg = F::sample_configs().front();
    constexpr std::uint64_t size = 64 * 4096;
    guest_ram used(size, pa_t{0x40000000});
    used.set_table_pool(pa_t{0x40000000 + 4096}, size - 4096);
    guest_ram fresh(size, pa_t{0x40000000});
    fresh.set_table_pool(pa_t{0x40000000 + 4096}, size - 4096);

    // Leave bytes behind: a table that maps something, and a guest write outside the pool.
    const std::uint64_t marker = 0x1122334455667788;
    REQUIRE(used.write(pa_t{0x40000000}, &marker, sizeof marker));
    std::uint64_t root_before = 0;
    {
        auto pt = page_table<F, guest_ram>::create(cfg, used);
        REQUIRE(pt.ok());
        root_before = pt->root().value;
        REQUIRE(pt->map(iova_t{0x200000}, pa_t{0x1000}, length_t{0x3000}, prot::read).ok());
        CHECK_FALSE(used.clear());  // tables in use: refused, nothing changed
        std::uint64_t back = 0;
        REQUIRE(used.read(pa_t{0x40000000}, &back, sizeof back));
        CHECK(back == marker);
        CHECK(pt->iova_to_phys(iova_t{0x201000})->value == 0x2000);
    }
    REQUIRE(used.bytes_in_use() == 0);
    REQUIRE(used.clear());
    CHECK(std::ranges::all_of(used.bytes(), [](std::byte b) { return b == std::byte{0}; }));

    // The same operations on the cleared RAM and on a new one: same tables at the same places.
    auto a = page_table<F, guest_ram>::create(cfg, used);
    auto b = page_table<F, guest_ram>::create(cfg, fresh);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->root().value == root_before);
    CHECK(a->root().value == b->root().value);
    REQUIRE(a->map(iova_t{0x40000000}, pa_t{0x5000}, length_t{0x2000}, prot::read | prot::write).ok());
    REQUIRE(b->map(iova_t{0x40000000}, pa_t{0x5000}, length_t{0x2000}, prot::read | prot::write).ok());
    CHECK(used.bytes_in_use() == fresh.bytes_in_use());
    CHECK(std::ranges::equal(used.bytes(), fresh.bytes()));
}

TEST_CASE("guest_ram gives an entry only where the whole word lies inside RAM and is aligned", "[guest_ram]") {
    struct ram_case {
        std::uint64_t base, size;
    };
    // A RAM at an ordinary base, at an unaligned base, ending at the top of the address space,
    // smaller than one 8-byte word, and empty.
    const ram_case cases[] = {{0x10000, 4096}, {0x10004, 4096}, {~std::uint64_t{0} - 4095, 4096}, {0x2000, 6}, {0x3000, 0}};
    for (const auto& c : cases) {
        INFO("base 0x" << std::hex << c.base << " size 0x" << c.size);
        guest_ram ram(c.size, pa_t{c.base});
        // Every 4-aligned address in and around RAM, by the definition: aligned and
        // [pa, pa + word) inside [base, base + size).
        for (std::uint64_t d = 0; d < c.size + 32; d += 4) {
            for (const std::uint64_t pa : {c.base + d, c.base - 4 - d}) {
                const auto inside = [&](std::uint64_t w) {
                    return pa >= c.base && pa - c.base <= c.size && c.size - (pa - c.base) >= w;
                };
                CHECK((ram.entry<std::uint32_t>(pa_t{pa}) != nullptr) == (pa % 4 == 0 && inside(4)));
                CHECK((ram.entry<std::uint64_t>(pa_t{pa}) != nullptr) == (pa % 8 == 0 && inside(8)));
                const auto run = ram.entries<std::uint64_t>(pa_t{pa}, 1000, false);
                CHECK((run.count != 0) == (pa % 8 == 0 && inside(8)));
                if (run.count != 0) CHECK(run.count == std::min<std::uint64_t>(1000, (c.size - (pa - c.base)) / 8));
                CHECK(ram.entry<std::uint32_t>(pa_t{pa + 2}) == nullptr);  // misaligned
            }
        }
    }
}

TEST_CASE("a map that needs more tables than the pool holds fails with nomem without counting them all, "
          "and an existing leaf in its range still says exists",
          "[guest_ram][nomem]") {
    // Sv57x4: 2^50 bytes whose output is only 4K-aligned need 2^29 leaf tables (2 TiB of tables);
    // the pool holds 64 KiB. The plan stops counting once it passes the pool (engine/page_table.hpp
    // plan_table), so this returns at once instead of visiting 2^29 empty entries.
    using F = riscv_s2;
    guest_ram ram{1 << 20, pa_t{0x100000000}};
    ram.set_table_pool(pa_t{0x100000000}, 64 << 10);
    CHECK(ram.table_bytes_left() == 64 << 10);
    auto created = page_table<F, guest_ram>::create(riscv_config{5}, ram);
    REQUIRE(created.ok());
    auto pt = std::move(created).value();
    const std::uint64_t used = ram.bytes_in_use();
    CHECK(ram.table_bytes_left() == (64 << 10) - used);
    const std::uint64_t huge = std::uint64_t{1} << 50;
    auto r = pt.map(ipa_t{huge}, pa_t{0x1000}, length_t{huge}, prot::read);
    REQUIRE(!r.ok());
    CHECK(r.error() == errc::nomem);
    CHECK(ram.bytes_in_use() == used);
    CHECK(pt.iova_to_phys(ipa_t{huge}) == std::nullopt);
    // A leaf at the end of the range: the plan reaches it past the budget and reports it first.
    REQUIRE(pt.map(ipa_t{2 * huge - 0x1000}, pa_t{0x5000}, length_t{0x1000}, prot::read).ok());
    const std::uint64_t with_leaf = ram.bytes_in_use();
    r = pt.map(ipa_t{huge}, pa_t{0x1000}, length_t{huge}, prot::read);
    REQUIRE(!r.ok());
    CHECK(r.error() == errc::exists);
    CHECK(ram.bytes_in_use() == with_leaf);
    CHECK(pt.iova_to_phys(ipa_t{2 * huge - 1})->value == 0x5fff);
}
