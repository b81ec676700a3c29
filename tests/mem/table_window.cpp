// SPDX-License-Identifier: MIT
// mem/table_window.hpp: the table allocator of guest RAM and of the nested table memory.
// Live tables never overlap, are aligned to their footprint and lie inside the window; the
// bytes in use are exactly the live footprints; a gap skipped for alignment serves smaller
// tables; foreign and double frees change nothing.
#include <cstdint>
#include <map>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/mem/table_window.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

using namespace iopgtable;

TEST_CASE("table_window: the gap skipped for an aligned table serves smaller ones, first come first placed") {
    table_window w(0x10000, 0x20000);
    CHECK(*w.take(64) == 0x10000);
    CHECK(*w.take(0x1000) == 0x11000);  // [0x10040, 0x11000) goes to the free lists
    CHECK(w.in_use() == 0x1040);
    CHECK(*w.take(0x800) == 0x10800);  // the gap's largest aligned block
    CHECK(*w.take(16) == 0x10040);     // footprint 64: the gap's first block
    CHECK(w.in_use() == 0x1040 + 0x800 + 64);
    CHECK(w.bytes_left() == 0x10000 - w.in_use());
}

TEST_CASE("table_window: refusals and frees it could not have handed out") {
    table_window w(0x1000, 0x3000);
    CHECK(w.take(96).error() == errc::invalid);
    CHECK(*w.take(0x1000) == 0x1000);
    CHECK(*w.take(0x1000) == 0x2000);
    CHECK(w.take(64).error() == errc::nomem);
    const auto before = w.in_use();
    w.give(0x3000, 0x1000);  // beyond the window
    w.give(0x1800, 0x1000);  // misaligned
    w.give(0x0, 0x1000);     // below the window
    CHECK(w.in_use() == before);
    int also_ran = 0;  // what runs inside the reset (guest RAM's memset) runs only when it resets
    CHECK_FALSE(w.reset_if_idle([&]() noexcept { ++also_ran; }));
    CHECK(also_ran == 0);
    w.give(0x1000, 0x1000);
    w.give(0x2000, 0x1000);
    w.give(0x2000, 0x1000);  // a second free of the same table: nothing is in use any more
    CHECK(w.in_use() == 0);
    CHECK(w.reset_if_idle([&]() noexcept { ++also_ran; }));
    CHECK(also_ran == 1);
    CHECK(*w.take(64) == 0x1000);  // allocation starts where it started
    CHECK(table_window(5, 3).take(64).error() == errc::nomem);  // an empty window
}

TEST_CASE("table_window: random takes and gives keep live tables disjoint, aligned and counted") {
    rc::prop("table_window invariants", [] {
        const std::uint64_t lo = *rc::gen::inRange<std::uint64_t>(0, 64) * 64;
        const std::uint64_t size = *rc::gen::inRange<std::uint64_t>(1, 64) * 1024;
        table_window w(lo, lo + size);
        std::map<std::uint64_t, std::uint64_t> live;  // address -> footprint
        std::uint64_t used = 0;
        const auto ops = *rc::gen::container<std::vector<std::pair<bool, unsigned>>>(
            rc::gen::pair(rc::gen::arbitrary<bool>(), rc::gen::inRange(0u, 11u)));
        for (const auto& [give, pick] : ops) {
            if (give && !live.empty()) {
                auto it = live.begin();
                std::advance(it, pick % live.size());
                w.give(it->first, it->second);
                used -= it->second;
                live.erase(it);
            } else {
                const std::uint64_t bytes = std::uint64_t{16} << pick;  // 16 B .. 32 KiB
                const std::uint64_t fp = table_window::footprint(bytes);
                auto r = w.take(bytes);
                if (!r) {
                    RC_ASSERT(r.error() == errc::nomem);  // freed tables are not merged: room may be split
                    continue;
                }
                const std::uint64_t at = *r;
                RC_ASSERT(at % fp == 0);
                RC_ASSERT(at >= lo);
                RC_ASSERT(at + fp <= lo + size);
                auto next = live.lower_bound(at);
                RC_ASSERT(next == live.end() || next->first >= at + fp);
                if (next != live.begin()) RC_ASSERT(std::prev(next)->first + std::prev(next)->second <= at);
                live.emplace(at, fp);
                used += fp;
            }
            RC_ASSERT(w.in_use() == used);
            RC_ASSERT(w.bytes_left() == size - used);
        }
        for (const auto& [at, fp] : live) w.give(at, fp);
        RC_ASSERT(w.in_use() == 0u);
        RC_ASSERT(w.reset_if_idle());
    });
}
