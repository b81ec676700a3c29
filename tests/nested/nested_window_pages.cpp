// SPDX-License-Identifier: MIT
/// @file nested_window_pages.cpp
/// A guest's stage-1 table that spans several stage-2 pages (stage-1 granule 64K over stage-2
/// 4K pages): the engine reads and writes it one stage-2 page at a time, as the memory defines
/// its pages (mem/memory.hpp `entry_run`), so that a hole, a read-only page or a page moved to
/// other host memory under the middle of a table gives a fault or `exists`, never a read or
/// write of host memory stage 2 does not map there. These failed before the engine stopped
/// reading a table's entries by pointer arithmetic across pages (a guest-triggered crash).
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/iopgtable.hpp>

#include "nested/nested_fixture.hpp"

namespace iopgtable::test {
namespace {

using S1 = arm_lpae_s1_64k;
using S2 = arm_lpae_s2_4k;
using world = two_stage<S1, S2>;

constexpr std::uint64_t k64 = 0x10000;
constexpr std::uint64_t k4 = 0x1000;

std::vector<std::byte> snapshot(guest_ram& host) {
    auto b = host.bytes();
    return {b.begin(), b.end()};
}

/// The level-0 (64K leaf) table that holds the entry of `iova`, as an IPA.
std::uint64_t leaf_table_ipa(world& w, std::uint64_t iova) {
    auto l = w.s1->lookup(iova_t{iova});
    REQUIRE(l.level == 0);
    return l.entry_address.value & ~(k64 - 1);
}

/// The host-physical address stage 2 maps `ipa` to.
std::uint64_t hpa_of(world& w, std::uint64_t ipa) {
    auto pa = w.s2->iova_to_phys(ipa_t{ipa});
    REQUIRE(pa);
    return pa->value;
}

// IOVA 0x10000000 puts a leaf in the level-0 table covering [0, 512M); entries of IOVAs
// [0x2000000, 0x4000000) lie in that table's second 4K page.
struct hole_setup {
    world w;
    std::uint64_t table = 0, page = 0, page_hpa = 0;
    hole_setup() {
        REQUIRE(w.s1->map(iova_t{0x10000000}, pa_t{0x200000}, length_t{k64}, rw).ok());
        table = leaf_table_ipa(w, 0x10000000);
        REQUIRE(leaf_table_ipa(w, 0x0) == table);
        page = table + k4;
        page_hpa = hpa_of(w, page);
    }
};

TEST_CASE("a hole in stage 2 under the middle of a stage-1 table faults; nothing changes", "[nested][window]") {
    hole_setup s;
    REQUIRE(s.w.s2->unmap(ipa_t{s.page}, length_t{k4}).ok());
    const auto before = snapshot(s.w.host);
    const auto bytes = s.w.s1->table_bytes();

    auto m = s.w.s1->map(iova_t{0}, pa_t{0x6000000}, length_t{0x6000000}, rw);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error() == errc::fault);
    CHECK(snapshot(s.w.host) == before);
    CHECK(s.w.s1->table_bytes() == bytes);

    // Unmapping across the hole must read it: fault, nothing changed. (A range covering the
    // whole table unlinks it from the level above without reading it.)
    auto u = s.w.s1->unmap(iova_t{0}, length_t{0x6000000});
    REQUIRE_FALSE(u.ok());
    CHECK(u.error() == errc::fault);
    CHECK(snapshot(s.w.host) == before);
    CHECK(s.w.s1->iova_to_phys(iova_t{0x10000000}) == pa_t{0x200000});

    // Ranges that stay in mapped pages still work.
    CHECK(s.w.s1->map(iova_t{0x0}, pa_t{0x0}, length_t{0x2000000}, rw).ok());
    CHECK(s.w.s1->iova_to_phys(iova_t{0x1ff0000}) == pa_t{0x1ff0000});
}

TEST_CASE("a view refuses a stage-2 hole in one fetch: the rest of the hole, with one stage-2 walk", "[nested][window]") {
    hole_setup s;
    REQUIRE(s.w.s2->unmap(ipa_t{s.page}, length_t{k4}).ok());
    constexpr std::uint64_t words = k4 / sizeof(std::uint64_t);  // a 4K stage-2 page of 64-bit entries

    nested::stage2_view<S2, guest_ram> view(s.w.stage2());
    auto r = view.entries<std::uint64_t>(pa_t{s.page}, 8192, false);
    CHECK(r.count == 0);
    CHECK(r.first == nullptr);
    CHECK(view.refused_run() == words);  // the empty level-0 entry of stage 2 covers exactly the 4K page
    REQUIRE(view.last_fault());
    CHECK(view.last_fault()->reason == nested::fault_reason::translation);
    const unsigned one_walk = view.accesses();
    CHECK(one_walk >= 1);
    CHECK(one_walk <= S2::max_levels);

    // From inside the hole: up to its end; a shorter request: that many.
    CHECK(view.entries<std::uint64_t>(pa_t{s.page + 10 * 8}, 8192, false).count == 0);
    CHECK(view.refused_run() == words - 10);
    CHECK(view.entries<std::uint64_t>(pa_t{s.page}, 3, false).count == 0);
    CHECK(view.refused_run() == 3);
    // The page after the hole is mapped: a run from there, not part of the hole.
    CHECK(view.entries<std::uint64_t>(pa_t{s.page + k4}, 8192, false).count == words);

    // Read as empty: a run of zero words over the rest of the hole (at most 4 KiB of them).
    nested::stage2_view<S2, guest_ram> empty_view(s.w.stage2(), nested::view_settings{.unreadable_as_empty = true});
    auto z = empty_view.entries<std::uint64_t>(pa_t{s.page + 8}, 8192, false);
    REQUIRE(z.count == words - 1);
    REQUIRE(z.first != nullptr);
    CHECK(std::all_of(z.first, z.first + z.count, [](std::uint64_t v) { return v == 0; }));
    CHECK(empty_view.accesses() == one_walk);
    // A store is never given a zero word.
    CHECK(empty_view.entries<std::uint64_t>(pa_t{s.page}, 1, true).count == 0);

    // Read as empty, only the zero words given count against the fetch budget. With the
    // whole 2M around the table gone (an empty stage-2 level-1 entry), a fetch of the table's
    // 8192 words gives 512 (4 KiB of zeros): of a budget of 600, 88 are left for the next.
    const std::uint64_t block = s.table & ~std::uint64_t{0x1fffff};
    REQUIRE(s.w.s2->unmap(ipa_t{block}, length_t{0x200000}).ok());
    nested::stage2_view<S2, guest_ram> budget_view(
        s.w.stage2(), nested::view_settings{.unreadable_as_empty = true, .fetch_budget = 600});
    CHECK(budget_view.entries<std::uint64_t>(pa_t{s.table}, 8192, false).count == 512);
    CHECK(budget_view.entries<std::uint64_t>(pa_t{s.table + 512 * 8}, 8192, false).count == 88);
    CHECK_FALSE(budget_view.exhausted());
}

TEST_CASE("the engine passes a stage-2 hole under a guest's table with one stage-2 walk", "[nested][window]") {
    hole_setup s;
    REQUIRE(s.w.s2->unmap(ipa_t{s.page}, length_t{k4}).ok());
    // reclaim scans the level-0 table from its first entry up to the leaf of 0x10000000 (entry
    // 4096): the hole's 512 entries lie on the way. Each entry asked on its own would cost a
    // stage-2 walk; the cursor takes the view's refused run as one unbacked step.
    auto& view = s.w.gmem->view();
    view.begin_walk();
    (void)s.w.s1->reclaim();
    CHECK(view.accesses() < 512);  // asked entry by entry, the hole alone costs one walk per entry
    CHECK(s.w.s1->iova_to_phys(iova_t{0x10000000}) == pa_t{0x200000});
}

TEST_CASE("a read-only stage-2 page under a stage-1 table: reads pass, writes fault", "[nested][window]") {
    hole_setup s;
    // A leaf whose entry lies in the page and one in the table's first page, then the host
    // makes the second page read-only.
    REQUIRE(s.w.s1->map(iova_t{0x2010000}, pa_t{0x300000}, length_t{k64}, rw).ok());
    REQUIRE(s.w.s1->map(iova_t{0x1000000}, pa_t{0x400000}, length_t{k64}, rw).ok());
    REQUIRE(s.w.s2->unmap(ipa_t{s.page}, length_t{k4}).ok());
    REQUIRE(s.w.s2->map(ipa_t{s.page}, pa_t{s.page_hpa}, length_t{k4}, prot::read).ok());
    const auto before = snapshot(s.w.host);

    // Empty entries in the read-only page: the plan sees they cannot be written.
    auto m = s.w.s1->map(iova_t{0x2100000}, pa_t{0x6000000}, length_t{0x100000}, rw);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error() == errc::fault);
    CHECK(snapshot(s.w.host) == before);

    // Reading needs read permission only: an empty range there unmaps nothing, lookups work.
    auto empty = s.w.s1->unmap(iova_t{0x2000000}, length_t{k64});
    REQUIRE(empty.ok());
    CHECK(empty->value == 0);
    CHECK(s.w.s1->iova_to_phys(iova_t{0x2010000}) == pa_t{0x300000});
    CHECK(s.w.s1->lookup(iova_t{0x2020000}).status == walk_status::unmapped);

    // Removing the leaf there needs a store: fault, and the other leaf in the range stays too.
    auto u = s.w.s1->unmap(iova_t{0}, length_t{0x6000000});
    REQUIRE_FALSE(u.ok());
    CHECK(u.error() == errc::fault);
    CHECK(snapshot(s.w.host) == before);
    CHECK(s.w.s1->iova_to_phys(iova_t{0x1000000}) == pa_t{0x400000});

}

TEST_CASE("a stage-1 table page moved to other host memory is read where stage 2 puts it", "[nested][window]") {
    hole_setup s;
    REQUIRE(s.w.s2->unmap(ipa_t{s.page}, length_t{k4}).ok());
    REQUIRE(s.w.s2->map(ipa_t{s.page}, pa_t{spare_hpa}, length_t{k4}, rw).ok());
    // The guest writes an entry into the moved page.
    REQUIRE(s.w.s1->map(iova_t{0x2000000}, pa_t{0x200000}, length_t{k64}, rw).ok());
    CHECK(s.w.host.entry<std::uint64_t>(pa_t{spare_hpa})[0] != 0);
    const auto before = snapshot(s.w.host);

    // A map over the live entry answers exists, whatever the old page holds.
    auto m = s.w.s1->map(iova_t{0}, pa_t{0x6000000}, length_t{0x6000000}, rw);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error() == errc::exists);
    CHECK(snapshot(s.w.host) == before);
    CHECK(s.w.s1->iova_to_phys(iova_t{0x2000000}) == pa_t{0x200000});

    // Unmap finds the entry on the moved page and clears it there.
    auto u = s.w.s1->unmap(iova_t{0}, length_t{0x6000000});
    REQUIRE(u.ok());
    CHECK(u->value == k64);
    CHECK(s.w.host.entry<std::uint64_t>(pa_t{spare_hpa})[0] == 0);
    CHECK(s.w.s1->map(iova_t{0}, pa_t{0x6000000}, length_t{0x6000000}, rw).ok());
    CHECK(s.w.s1->iova_to_phys(iova_t{0x2000000}) == pa_t{0x8000000});
}

TEST_CASE("stage-1 tables over scattered stage-2 pages behave as tables in one piece", "[nested][window]") {
    // Stage 2 maps the guest's table window page by page in reverse order: every 64K stage-1
    // table lies in sixteen host pages, none next to its neighbour. A host-heap table given
    // the same operations must end with the same translations.
    world w;
    const std::uint64_t pages = window_size / k4;
    REQUIRE(w.s2->unmap(ipa_t{window_ipa}, length_t{window_size}).ok());
    for (std::uint64_t i = 0; i < pages; ++i)
        REQUIRE(w.s2->map(ipa_t{window_ipa + i * k4}, pa_t{window_hpa + (pages - 1 - i) * k4}, length_t{k4}, rw).ok());
    host_heap heap;
    auto ref = page_table<S1, host_heap>::create(w.s1_cfg, heap);
    REQUIRE(ref.ok());

    std::mt19937_64 rng(12345);
    for (int op = 0; op < 400; ++op) {
        const std::uint64_t va = (rng() % 0x4000) * k64;  // [0, 1G): a few level-0 tables
        const std::uint64_t len = (1 + rng() % 96) * k64;
        const std::uint64_t pa = (rng() % 0x4000) * k64;
        if (rng() % 3 != 0) {
            auto a = w.s1->map(iova_t{va}, pa_t{pa}, length_t{len}, rw);
            auto b = ref->map(iova_t{va}, pa_t{pa}, length_t{len}, rw);
            REQUIRE(a.ok() == b.ok());
            if (!a.ok()) REQUIRE(a.error() == b.error());
        } else {
            auto a = w.s1->unmap(iova_t{va}, length_t{len});
            auto b = ref->unmap(iova_t{va}, length_t{len});
            REQUIRE(a.ok() == b.ok());
            if (a.ok()) REQUIRE(a->value == b->value);
            else REQUIRE(a.error() == b.error());
        }
    }
    for (std::uint64_t va = 0; va < 0x40000000; va += k64)
        REQUIRE(w.s1->iova_to_phys(iova_t{va}) == ref->iova_to_phys(iova_t{va}));
}

} // namespace
} // namespace iopgtable::test
