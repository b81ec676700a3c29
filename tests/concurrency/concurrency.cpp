// SPDX-License-Identifier: MIT
// Concurrency: several threads map, unmap and translate disjoint ranges of one table whose
// ranges share intermediate tables, so that table installation races (compare-and-exchange;
// the loser frees its copy). Built as its own program without rapidcheck so that it runs under
// ThreadSanitizer (-DIOPGTABLE_SANITIZE=thread).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/reference_model.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

constexpr unsigned threads = 4;
constexpr unsigned rounds = 24;
constexpr std::uint64_t pages_per_round = 64;

/// A stride between rounds' regions as large as the input space allows, so that each round
/// starts in a top-level entry (or the highest-level entry possible) nothing has touched; at
/// least the span of one lowest-level table.
template <class F>
std::uint64_t round_stride(const geometry& g) {
    for (unsigned l = g.levels; l-- > 1;) {
        const std::uint64_t s = std::uint64_t{1} << F::item_lg2(l);
        if ((rounds + 1) * s <= ias_end(g)) return s;
    }
    if (g.levels == 1)  // one table: strides within it, each round's pages inside its stride
        return std::max(std::bit_floor(ias_end(g) / (rounds + 1)), std::bit_ceil(pages_per_round * smallest_page(g)));
    return std::uint64_t{1} << F::item_lg2(1);
}
/// Rounds that fit in the input space at that stride.
template <class F>
unsigned rounds_for(const geometry& g) {
    return static_cast<unsigned>(std::min<std::uint64_t>(rounds, ias_end(g) / round_stride<F>(g) - 1));
}

/// Records the first problem a worker thread sees (Catch assertions are not thread-safe).
struct first_error {
    std::atomic<bool> set{false};
    std::string text;
    void report(std::string why) {
        bool expected = false;
        if (set.compare_exchange_strong(expected, true)) text = std::move(why);
    }
};

template <class PT>
std::vector<dump_entry> quiet_dump(const PT& pt, first_error& err) {
    std::vector<dump_entry> out;
    auto r = pt.visit_all([&](const leaf_entry<typename PT::format>& e) {
        out.push_back({e.iova, e.level, e.size_lg2, static_cast<std::uint64_t>(e.raw)});
        return true;
    });
    if (!r) err.report("visit failed");
    return out;
}

/// A barrier whose waiters spin (yielding), so that they leave it together and their first
/// operations overlap (a blocking barrier wakes them one by one).
class spin_barrier {
public:
    explicit spin_barrier(unsigned n) noexcept : n_(n) {}
    void arrive_and_wait() noexcept {
        const unsigned gen = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_acq_rel);
            return;
        }
        while (generation_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }

private:
    const unsigned n_;
    std::atomic<unsigned> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

/// Round r: thread t maps every `threads`-th smallest page of a fresh region (adjacent pages
/// share every table), checks its own translations while the others work and probes theirs
/// (each probe must be nothing or the right address), then unmaps its pages.
template <class F, class M>
void interleaved_pages(const typename F::config& cfg, M& mem) {
    auto pt = make_table<F>(cfg, mem);
    const geometry g = pt.geo();
    const std::uint64_t small = smallest_page(g);
    const std::uint64_t stride = round_stride<F>(g);
    const unsigned round_count = rounds_for<F>(g);
    REQUIRE(round_count >= 4);
    auto va_of = [&](unsigned r, std::uint64_t i) { return (r + 1) * stride - (pages_per_round / 2) * small + i * small; };
    auto pa_of = [&](unsigned r, std::uint64_t i) { return (std::uint64_t{r} * pages_per_round + i + 1) * small; };
    first_error err;
    spin_barrier sync(threads);
    std::vector<std::vector<dump_entry>> mapped_dumps(round_count);
    std::vector<std::uint64_t> mem_after_map(round_count), tables_after_map(round_count);

    auto worker = [&](unsigned t) {
        for (unsigned r = 0; r < round_count; ++r) {
            sync.arrive_and_wait();
            for (std::uint64_t i = t; i < pages_per_round; i += threads) {
                if (auto m = pt.map(in_addr<F>(va_of(r, i)), pa_t{pa_of(r, i)}, length_t{small}, prot::read | prot::write); !m)
                    err.report("map " + hex(va_of(r, i)) + ": " + std::string(to_string(m.error())));
                // Probe a neighbour's page: nothing yet, or its address.
                const std::uint64_t j = (i + 1) % pages_per_round;
                if (auto p = pt.iova_to_phys(in_addr<F>(va_of(r, j))); p && p->value != pa_of(r, j))
                    err.report("probe " + hex(va_of(r, j)) + " gave " + hex(p->value));
            }
            for (std::uint64_t i = t; i < pages_per_round; i += threads) {
                auto p = pt.iova_to_phys(in_addr<F>(va_of(r, i) + 42));
                if (!p || p->value != pa_of(r, i) + 42) err.report("own page " + hex(va_of(r, i)) + " does not translate");
            }
            sync.arrive_and_wait();
            if (t == 0) {
                mapped_dumps[r] = quiet_dump(pt, err);
                mem_after_map[r] = mem.bytes_in_use();
                tables_after_map[r] = pt.table_bytes();
            }
            sync.arrive_and_wait();
            for (std::uint64_t i = t; i < pages_per_round; i += threads) {
                auto u = pt.unmap(in_addr<F>(va_of(r, i)), length_t{small});
                if (!u || u->value != small) err.report("unmap " + hex(va_of(r, i)));
                if (pt.iova_to_phys(in_addr<F>(va_of(r, i)))) err.report("unmapped " + hex(va_of(r, i)) + " translates");
                const std::uint64_t j = (i + 1) % pages_per_round;
                if (auto p = pt.iova_to_phys(in_addr<F>(va_of(r, j))); p && p->value != pa_of(r, j))
                    err.report("probe " + hex(va_of(r, j)) + " gave " + hex(p->value));
            }
        }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker, t);
    for (auto& th : pool) th.join();
    INFO(err.text);
    REQUIRE(!err.set.load());

    for (unsigned r = 0; r < round_count; ++r) {
        INFO("round " << r);
        reference_model model(g);
        for (std::uint64_t i = 0; i < pages_per_round; ++i)
            REQUIRE(model.map(va_of(r, i), pa_of(r, i), small, prot::read | prot::write).ok());
        // Leaves of earlier rounds were unmapped before this round began.
        CHECK(dump_difference(mapped_dumps[r], model.expected_dump<F>(cfg)) == "");
        // No table of a lost race leaked: memory holds exactly the table's own tables.
        CHECK(mem_after_map[r] == tables_after_map[r] - pt.top_table_bytes() + root_only_bytes(pt));
    }
    CHECK(dump(pt).empty());
    pt.reclaim();
    CHECK(pt.table_bytes() == pt.top_table_bytes());
    CHECK(mem.bytes_in_use() == root_only_bytes(pt));
}

/// Thread 0 maps, splits and unmaps blocks of the second-smallest size while the other threads
/// map and unmap smallest pages in the neighbouring blocks of the same tables; translations are
/// checked throughout and at the end.
template <class F, class M>
void blocks_beside_pages(const typename F::config& cfg, M& mem) {
    auto pt = make_table<F>(cfg, mem);
    const geometry g = pt.geo();
    const auto sizes = page_sizes(g);
    if (sizes.size() < 2) return;
    // The smallest block that holds the 8 pages the other threads map (a format may have sizes between).
    const std::uint64_t small = sizes[0];
    std::uint64_t block = sizes.back();
    for (std::uint64_t sz : sizes)
        if (sz >= 8 * small) {
            block = sz;
            break;
        }
    if (block < 8 * small) return;
    // Region k (one block wide) belongs to thread k % threads; up to four each, from a
    // high-level boundary when the input space has room.
    std::uint64_t base = round_stride<F>(g);
    if (base + 4 * threads * block > ias_end(g)) base = 0;
    const std::uint64_t region_count = std::min<std::uint64_t>(4 * threads, (ias_end(g) - base) / block) / threads * threads;
    REQUIRE(region_count >= threads);
    first_error err;
    spin_barrier sync(threads);
    auto worker = [&](unsigned t) {
        for (unsigned rep = 0; rep < 8; ++rep) {
            sync.arrive_and_wait();
            for (std::uint64_t k = t; k < region_count; k += threads) {
                const std::uint64_t va = base + k * block, pa = k * block;
                if (t == 0) {
                    if (!pt.map(in_addr<F>(va), pa_t{pa}, length_t{block}, prot::read))
                        err.report("map block " + hex(va));
                    auto u = pt.unmap(in_addr<F>(va + small), length_t{small}, unmap_mode::split);
                    if (!u || u->value != small) err.report("split " + hex(va));
                    if (auto p = pt.iova_to_phys(in_addr<F>(va + 2 * small)); !p || p->value != pa + 2 * small)
                        err.report("after split " + hex(va));
                } else {
                    for (std::uint64_t i = 0; i < 8; ++i)
                        if (!pt.map(in_addr<F>(va + i * small), pa_t{pa + i * small}, length_t{small}, prot::write))
                            err.report("map page " + hex(va + i * small));
                    if (auto p = pt.iova_to_phys(in_addr<F>(va + 7 * small)); !p || p->value != pa + 7 * small)
                        err.report("page " + hex(va));
                }
            }
            sync.arrive_and_wait();
            for (std::uint64_t k = t; k < region_count; k += threads) {
                auto u = pt.unmap(in_addr<F>(base + k * block), length_t{block});
                const std::uint64_t want = t == 0 ? block - small : 8 * small;
                if (!u || u->value != want) err.report("unmap region " + hex(base + k * block));
            }
        }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker, t);
    for (auto& th : pool) th.join();
    INFO(err.text);
    REQUIRE(!err.set.load());
    CHECK(dump(pt).empty());
    pt.reclaim();
    CHECK(pt.table_bytes() == pt.top_table_bytes());
    CHECK(mem.bytes_in_use() == root_only_bytes(pt));
}

} // namespace

TEMPLATE_LIST_TEST_CASE("threads map and unmap adjacent pages that share tables", "[concurrency]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        {
            auto mem = make_test_memory<F>();
            interleaved_pages<F>(s.cfg, *mem);
            CHECK(mem->bytes_in_use() == 0);
        }
        {
            guest_ram ram{std::uint64_t{64} << 20, pa_t{0}};
            interleaved_pages<F>(s.cfg, ram);
            CHECK(ram.bytes_in_use() == 0);
        }
    }
}

TEMPLATE_LIST_TEST_CASE("a thread splits blocks beside threads mapping pages in the same tables", "[concurrency]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        auto mem = make_test_memory<F>();
        blocks_beside_pages<F>(s.cfg, *mem);
        CHECK(mem->bytes_in_use() == 0);
    }
}
