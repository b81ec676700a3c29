// SPDX-License-Identifier: MIT
// Conformance suite, part 3: table memory and invalidation hooks. Every removed leaf is
// reported (leaf_removed, or inside a walk_flush range), walk_flush comes before the tables
// under it are freed, reclaim leaves the root alone, destruction returns everything.
#include <algorithm>
#include <map>
#include <vector>

#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/recording_memory.hpp"
#include "support/reference_model.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

/// Input range of one dump entry's slot and the output address of its first byte.
template <class F>
struct slot_translation {
    std::uint64_t iova, last, oa;
};
template <class F>
slot_translation<F> translation_of(const typename F::config& cfg, const dump_entry& e) {
    const std::uint64_t size = std::uint64_t{1} << e.size_lg2;
    const auto raw = static_cast<typename F::word>(e.raw);
    return {e.iova, e.iova + (std::uint64_t{1} << F::item_lg2(e.level)) - 1,
            F::leaf_address(cfg, e.level, raw) + (e.iova & (size - 1))};
}

/// The parts of `t`'s range that the entries of `after` no longer translate as `t` did.
template <class F>
std::vector<std::pair<std::uint64_t, std::uint64_t>> changed_parts(const typename F::config& cfg,
                                                                   const slot_translation<F>& t,
                                                                   const std::vector<dump_entry>& after) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> gaps;  // [first, last]
    std::uint64_t pos = t.iova;
    for (const auto& e : after) {
        const auto a = translation_of<F>(cfg, e);
        if (a.last < pos) continue;
        if (a.iova > t.last) break;
        const std::uint64_t from = std::max(a.iova, pos), to = std::min(a.last, t.last);
        if (from > pos) gaps.emplace_back(pos, from - 1);
        if (a.oa + (from - a.iova) != t.oa + (from - t.iova)) gaps.emplace_back(from, to);
        if (to == t.last) return gaps;
        pos = to + 1;
    }
    gaps.emplace_back(pos, t.last);
    return gaps;
}

/// Checks the events one operation produced: every table freed that was linked before the
/// operation (not a spare it allocated) comes after a walk_flush, and every part of the input
/// space whose translation changed lies inside a leaf_removed or walk_flush range.
template <class PT>
void check_flushes(const std::vector<event>& ev, const std::vector<dump_entry>& before, const PT& pt) {
    using F = typename PT::format;
    bool flushed = false;
    std::vector<std::uint64_t> spares;
    for (const auto& e : ev) {
        if (e.kind == event_kind::walk_flush) flushed = true;
        if (e.kind == event_kind::table_allocated) spares.push_back(e.a);
        if (e.kind == event_kind::table_freed && std::find(spares.begin(), spares.end(), e.a) == spares.end()) {
            INFO("table at 0x" << std::hex << e.a << " freed");
            CHECK(flushed);
        }
    }
    const auto after = dump(pt);
    for (const auto& leaf : before) {
        for (const auto& part : changed_parts<F>(pt.cfg(), translation_of<F>(pt.cfg(), leaf), after)) {
            const auto first = part.first, last = part.second;  // not a structured binding: clang 14 cannot capture one
            const bool covered = std::any_of(ev.begin(), ev.end(), [&](const event& e) {
                return (e.kind == event_kind::leaf_removed || e.kind == event_kind::walk_flush) && e.a <= first &&
                       last <= e.a + e.b - 1;
            });
            INFO("entry " << leaf << ": [0x" << std::hex << first << ", 0x" << last
                          << "] changed without an invalidation covering it");
            CHECK(covered);
        }
    }
}

/// The events after `from`.
std::vector<event> since(const event_log& log, std::size_t from) {
    return {log.events.begin() + static_cast<std::ptrdiff_t>(from), log.events.end()};
}

} // namespace

TEMPLATE_LIST_TEST_CASE("unmap reports each leaf it removes and flushes walks before freeing tables",
                        "[conformance][flush]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        auto base = make_test_memory<F>();
        event_log log;
        recording_memory<test_memory<F>> mem(*base, log);
        {
            auto pt = make_table<F>(s.cfg, mem, log.hooks());

            // Map: one leaf of every size, with holes; no invalidation on map.
            std::vector<std::pair<std::uint64_t, std::uint64_t>> leaves;
            std::uint64_t va = big + small;
            for (std::uint64_t sz : page_sizes(s.geo)) {
                va = (va + sz - 1) & ~(sz - 1);
                if (va + sz > 4 * big) break;
                REQUIRE(pt.map(in_addr<F>(va), pa_t{va}, length_t{sz}, prot::read).ok());
                leaves.emplace_back(va, sz);
                va += sz + small;
            }
            CHECK(log.count(event_kind::leaf_removed) == 0);
            CHECK(log.count(event_kind::walk_flush) == 0);
            CHECK(log.count(event_kind::table_freed) == 0);

            // Exact unmap of each leaf: exactly one leaf_removed with the leaf's range.
            for (auto [lva, sz] : leaves) {
                INFO("leaf 0x" << std::hex << sz << " at 0x" << lva);
                const std::size_t from = log.events.size();
                const auto before = dump(pt);
                CHECK(pt.unmap(in_addr<F>(lva), length_t{sz})->value == sz);
                const auto ev = since(log, from);
                REQUIRE(ev.size() == 1);
                CHECK(ev[0].kind == event_kind::leaf_removed);
                CHECK(ev[0].a == lva);
                CHECK(ev[0].b == sz);
                check_flushes(ev, before, pt);
            }

            // Smallest pages filling one lowest-level table, unmapped in one call: the table goes
            // with one walk_flush of its span, before it is freed.
            if (s.geo.levels >= 2) {
                const std::uint64_t span = std::uint64_t{1} << F::item_lg2(1);
                const std::uint64_t x = (2 * big + span - 1) & ~(span - 1);
                REQUIRE(x + span <= ias_end(s.geo));
                REQUIRE(pt.map_pages(in_addr<F>(x), pa_t{0}, length_t{small}, span / small, prot::write).ok());
                const std::size_t from = log.events.size();
                const auto before = dump(pt);
                CHECK(pt.unmap(in_addr<F>(x), length_t{span})->value == span);
                const auto ev = since(log, from);
                INFO("events " << ev.size());
                REQUIRE(ev.size() >= 2);
                CHECK(ev[0].kind == event_kind::walk_flush);
                CHECK(ev[0].a == x);
                CHECK(ev[0].b == span);
                CHECK(std::count_if(ev.begin(), ev.end(), [](const event& e) { return e.kind == event_kind::table_freed; }) >= 1);
                check_flushes(ev, before, pt);

                // Split: only the removed page is reported; no table is freed.
                const std::uint64_t mid = page_sizes(s.geo).size() > 1 ? page_sizes(s.geo)[1] : 2 * small;
                REQUIRE(pt.map(in_addr<F>(x), pa_t{0}, length_t{mid}, prot::write).ok());
                const std::size_t from2 = log.events.size();
                const auto before2 = dump(pt);
                CHECK(pt.unmap(in_addr<F>(x + small), length_t{small}, unmap_mode::split)->value == small);
                const auto ev2 = since(log, from2);
                // Tables it frees are spares it allocated and never linked.
                for (const auto& e : ev2)
                    if (e.kind == event_kind::table_freed)
                        CHECK(std::any_of(ev2.begin(), ev2.end(), [&](const event& a) {
                            return a.kind == event_kind::table_allocated && a.a == e.a;
                        }));
                CHECK(std::count_if(ev2.begin(), ev2.end(), [&](const event& e) {
                          return e.kind == event_kind::leaf_removed && e.a == x + small && e.b == small;
                      }) == 1);
                CHECK(std::count_if(ev2.begin(), ev2.end(), [](const event& e) { return e.kind == event_kind::leaf_removed; }) == 1);
                check_flushes(ev2, before2, pt);
                CHECK(pt.unmap(in_addr<F>(x), length_t{mid})->value == mid - small);
            }

            // Reclaim: each freed table right after the walk_flush of its span.
            const std::size_t from = log.events.size();
            const std::uint64_t freed = pt.reclaim();
            const auto ev = since(log, from);
            CHECK(pt.table_bytes() == pt.top_table_bytes());
            std::uint64_t freed_bytes = 0;
            for (std::size_t i = 0; i < ev.size(); ++i) {
                if (ev[i].kind != event_kind::table_freed) continue;
                freed_bytes += ev[i].b;
                REQUIRE(i > 0);
                CHECK(ev[i - 1].kind == event_kind::walk_flush);
            }
            CHECK(freed_bytes == freed);
            CHECK(log.count(event_kind::flush_all) == 0);
        }
        // Destruction: flush_all first, then the tables.
        CHECK(log.count(event_kind::flush_all) == 1);
        CHECK(base->bytes_in_use() == 0);
    }
}

TEMPLATE_LIST_TEST_CASE("an iotlb_gather spans what unmap removed", "[conformance][flush]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        auto mem = make_test_memory<F>();
        iotlb_gather gather;
        auto pt = make_table<F>(s.cfg, *mem, gather.hooks());
        REQUIRE(pt.map(in_addr<F>(big + small), pa_t{0}, length_t{small}, prot::read).ok());
        REQUIRE(pt.map(in_addr<F>(big + 5 * small), pa_t{0}, length_t{2 * small}, prot::read).ok());
        const std::size_t leaves = dump(pt).size();
        CHECK(gather.empty());
        CHECK(pt.unmap(in_addr<F>(big), length_t{8 * small})->value == 3 * small);
        CHECK(gather.leaves == leaves);
        CHECK(gather.walks == 0);
        CHECK(gather.start == big + small);
        CHECK(gather.last == big + 7 * small - 1);
        gather.reset();
        CHECK(pt.unmap(in_addr<F>(big), length_t{8 * small})->value == 0);
        CHECK(gather.empty());
    }
}

TEMPLATE_LIST_TEST_CASE("after unmapping everything, reclaim leaves the root alone; destruction frees all",
                        "[conformance][memory]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo), end = ias_end(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        auto mem = make_test_memory<F>();
        {
            auto pt = make_table<F>(s.cfg, *mem);
            reference_model model(s.geo);
            // Every size at the start, the middle and the top of the input space, each leaving
            // tables behind when unmapped page by page.
            for (std::uint64_t sz : page_sizes(s.geo)) {
                for (std::uint64_t va : {sz, end / 2 + sz, end - sz}) {
                    if (!model.map(va, 0, sz, prot::read).ok()) continue;
                    REQUIRE(pt.map(in_addr<F>(va), pa_t{0}, length_t{sz}, prot::read).ok());
                }
            }
            CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
            if (s.geo.levels > 1) {  // a single-level table never allocates
                CHECK(pt.table_bytes() > pt.top_table_bytes());
                CHECK(mem->bytes_in_use() > root_only_bytes(pt));
            }

            // Reclaim keeps tables that still hold something.
            const std::uint64_t keep = model.leaves().begin()->first;
            for (const auto& [va, leaf] : std::map(model.leaves()))
                if (va != keep) CHECK(pt.unmap(in_addr<F>(va), length_t{leaf.size()})->value == leaf.size());
            pt.reclaim();
            CHECK(pt.iova_to_phys(in_addr<F>(keep)).has_value());
            CHECK(dump(pt).size() >= 1);
            CHECK(pt.unmap(in_addr<F>(keep), length_t{model.leaves().begin()->second.size()}).ok());
            CHECK(dump(pt).empty());

            const std::uint64_t held = pt.table_bytes();
            CHECK(pt.reclaim() == held - pt.top_table_bytes());
            CHECK(pt.table_bytes() == pt.top_table_bytes());
            CHECK(mem->bytes_in_use() == root_only_bytes(pt));
            CHECK(pt.reclaim() == 0);

            // Live mappings at destruction.
            REQUIRE(pt.map(in_addr<F>(small), pa_t{0}, length_t{small}, prot::read).ok());
            REQUIRE(pt.map(in_addr<F>(ias_last(s.geo) - (big - 1)), pa_t{0}, length_t{big}, prot::read).ok());
            // Move-assignment destroys the target's tables and takes the source's.
            auto other = make_table<F>(s.cfg, *mem);
            REQUIRE(other.map(in_addr<F>(2 * big), pa_t{0}, length_t{small}, prot::read).ok());
            other = std::move(pt);
            CHECK(other.iova_to_phys(in_addr<F>(small)).has_value());
            CHECK(!other.iova_to_phys(in_addr<F>(2 * big)).has_value());
            CHECK(mem->bytes_in_use() == other.table_bytes() - other.top_table_bytes() + root_only_bytes(other));
        }
        CHECK(mem->bytes_in_use() == 0);
    }
}
