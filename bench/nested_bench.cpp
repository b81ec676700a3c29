// SPDX-License-Identifier: MIT
/// @file nested_bench.cpp
/// Nested translation and folding (include/iopgtable/nested/), named `nested/<pair>/<op>`:
/// a nested walk cold, with the walk cache, with an IOTLB hit; a lookup in the folded shadow;
/// and the cost of keeping the shadow exact per changed 4K page, in each mode. Pairs: one per
/// stage-2 family of the format list (see `registered` below): LPAE 4K stage 1 over LPAE 4K
/// stage 2 (`arm-lpae`), VT-d first stage over second stage (`vtd-fl-on-vtd-sl`) and over
/// AMD-Vi v1 (`vtd-fl-on-amd-v1`), 4 levels each. bench/README.md ("Nested") describes the
/// setup and the figures.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <boost/hana/for_each.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/mem/host_heap.hpp>
#include <iopgtable/nested/nested.hpp>

#include "format_benches.hpp"

namespace iopgtable::bench {
namespace {

namespace nst = iopgtable::nested;

// Host-physical layout: stage-2 tables, then the backing of the guest's table window.
constexpr std::uint64_t host_base = 0x100000000, stage2_pool = 0x1000000;
constexpr std::uint64_t window_ipa = 0x40000000, window_size = 0x1000000;
constexpr std::uint64_t data_hpa = 0x2000000000;  // data pages: translated, never touched
constexpr std::uint64_t pages = 4096;             // stage-1 pages: IOVA i * 64K -> IPA i * 4K
constexpr std::uint64_t page = 0x1000, spread = 0x10000;
constexpr std::uint64_t sync_iova = std::uint64_t{1} << 32;  // where the sync benchmarks map
const prot rw = prot::read | prot::write;

/// Stage 2 maps the window and IPAs [0, 16M) with 4K pages; stage 1 maps `pages` pages, 16 per
/// 2M, so that they spread over 128 leaf tables.
template <class S1, class S2>
struct world {
    using guest_memory = nst::guest_table_memory<S2, guest_ram>;
    using translator = nst::nested_translator<S1, S2, guest_ram>;
    using folded = nst::folded_table<S1, S2, S1, guest_ram, host_heap>;

    guest_ram host{stage2_pool + window_size, pa_t{host_base}};
    std::optional<page_table<S2, guest_ram>> s2;
    std::optional<guest_memory> gmem;
    std::optional<page_table<S1, guest_memory>> s1;
    host_heap shadow_heap;
    std::vector<std::uint64_t> order;  ///< page indices in random order
    bool ok = false;

    world() {
        host.set_table_pool(pa_t{host_base}, stage2_pool);
        auto t2 = page_table<S2, guest_ram>::create(typename S2::config{}, host);
        if (!t2) return;
        s2.emplace(std::move(*t2));
        if (!s2->map_pages(ipa_t{window_ipa}, pa_t{host_base + stage2_pool}, length_t{page}, window_size / page, rw) ||
            !s2->map_pages(ipa_t{0}, pa_t{data_hpa}, length_t{page}, 4096, rw))
            return;
        gmem.emplace(stage2(), ipa_t{window_ipa}, window_size);
        auto t1 = page_table<S1, guest_memory>::create(typename S1::config{}, *gmem);
        if (!t1) return;
        s1.emplace(std::move(*t1));
        for (std::uint64_t i = 0; i < pages; ++i)
            if (!s1->map(iova_t{i * spread}, pa_t{i * page}, length_t{page}, rw)) return;
        order.resize(pages);
        for (std::uint64_t i = 0; i < pages; ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
        ok = true;
    }
    nst::stage_table<S2, guest_ram> stage2() const { return nst::stage_table<S2, guest_ram>::of(*s2); }
    std::optional<translator> make_translator(nst::nested_caches c = {}) const {
        auto t = translator::create(typename S1::config{}, ipa_t{s1->root().value}, stage2(), c);
        if (!t) return std::nullopt;
        return std::move(*t);
    }
    /// A shadow in S1's format on the host heap; mode (a) when `mediated`.
    std::optional<folded> make_fold(bool mediated) {
        auto f = folded::create(typename S1::config{}, ipa_t{s1->root().value}, *s2, typename S1::config{}, shadow_heap,
                                mediated ? &*s1 : nullptr);
        if (!f) return std::nullopt;
        return std::move(*f);
    }
};

template <class S1, class S2>
std::string label() {
    return std::string(S1::name) + " over " + S2::name + ", 4 levels each, " + std::to_string(pages) + " pages";
}

enum class walk_kind { cold, walk_cache, iotlb_hit };

/// 256 translations per batch. cold: no caches, every page. walk_cache: a 32-entry walk
/// cache, 64 pages in 2 leaf tables (the walk cache holds every table they need). iotlb_hit:
/// IOTLB and walk cache, 256 pages, all cached before timing.
/// `leaf`: `translate_leaf` (the DMA path's walk: output, flags and rights only) instead of
/// `translate` (the fault-exact record of both stages).
template <class S1, class S2>
void nested_walk(benchmark::State& st, walk_kind kind, bool leaf = false) {
    static world<S1, S2> w;  // built once: it maps 4096 + 8192 pages
    if (!w.ok) return fail(st, "setup failed");
    nst::walk_cache wc(32);
    nst::translation_cache tlb(4096);
    nst::nested_caches caches{};
    std::uint64_t working = pages;
    if (kind == walk_kind::walk_cache) {
        caches.walk = &wc;
        working = 64;
    } else if (kind == walk_kind::iotlb_hit) {
        caches.walk = &wc;
        caches.iotlb = &tlb;
        working = 256;
    }
    auto t = w.make_translator(caches);
    if (!t) return fail(st, "translator");
    std::vector<std::uint64_t> addrs;
    for (std::uint64_t i = 0; i < pages; ++i)
        if (w.order[i] < working) addrs.push_back(w.order[i] * spread + 0x123);
    for (auto a : addrs)
        if (!t->translate(iova_t{a}, {})) return fail(st, "translation faulted");
    t->reset_stats();
    batch_timer timer(st, label<S1, S2>());
    // The reference, timed in the same iterations: a single-stage walk, iova_to_phys of the
    // same pages' IPAs in the stage-2 table (4 levels, bounds-checked guest_ram).
    reference_timer ref;
    std::size_t next = 0, ref_next = 0;
    std::uint64_t bad = 0;
    for (auto _ : st) {
        timer.timed(256, 256, [&] {
            for (int i = 0; i < 256; ++i) {
                if (leaf) {
                    auto r = t->translate_leaf(iova_t{addrs[next]});
                    bad += !r.mapped();
                    benchmark::DoNotOptimize(r);
                } else {
                    auto r = t->translate(iova_t{addrs[next]}, {});
                    bad += !r.ok();
                    benchmark::DoNotOptimize(r);
                }
                if (++next == addrs.size()) next = 0;
            }
        });
        ref.timed(256, [&] {
            for (int i = 0; i < 256; ++i) {
                auto r = w.s2->iova_to_phys(typename S2::input_address{addrs[ref_next] / spread * page + 0x123});
                bad += !r;
                benchmark::DoNotOptimize(r);
                if (++ref_next == addrs.size()) ref_next = 0;
            }
        });
    }
    if (bad) return fail(st, "translation faulted");
    // walk_cold: `ratio` against 6 single-stage walks (24 entries read, as the nested walk
    // reads), so 1.2 is "24 bounds-checked entry loads plus 20%"; the others against one walk.
    ref.report(st, timer, kind == walk_kind::cold ? 6 : 1);
    st.counters["accesses_per_walk"] =
        t->stats().translations ? static_cast<double>(t->stats().accesses) / static_cast<double>(t->stats().translations) : 0;
}

/// 256 lookups per batch in the shadow folded from the same 4096 pages.
template <class S1, class S2>
void shadow_lookup(benchmark::State& st) {
    world<S1, S2> w;
    if (!w.ok) return fail(st, "setup failed");
    auto f = w.make_fold(false);
    if (!f) return fail(st, "fold");
    batch_timer timer(st, label<S1, S2>() + ", shadow " + S1::name + " host_heap");
    // The reference, timed in the same iterations: iova_to_phys of the same addresses in the
    // shadow's own table (a table of the shadow's format on host_heap).
    const auto& shadow_table = f->shadow().table();
    reference_timer ref;
    std::size_t next = 0, ref_next = 0;
    std::uint64_t bad = 0;
    for (auto _ : st) {
        timer.timed(256, 256, [&] {
            for (int i = 0; i < 256; ++i) {
                auto r = f->lookup(iova_t{w.order[next] * spread + 0x123});
                bad += !r.mapped;
                benchmark::DoNotOptimize(r);
                if (++next == pages) next = 0;
            }
        });
        ref.timed(256, [&] {
            for (int i = 0; i < 256; ++i) {
                auto r = shadow_table.iova_to_phys(typename S1::input_address{w.order[ref_next] * spread + 0x123});
                bad += !r;
                benchmark::DoNotOptimize(r);
                if (++ref_next == pages) ref_next = 0;
            }
        });
    }
    if (bad) return fail(st, "shadow lookup missed");
    ref.report(st, timer);
}

enum class sync_kind { mediated, resync_each, resync_batch, stage2_each };

/// Keeping the shadow exact, per changed 4K page (256 pages per batch):
/// mediated: `s1_map` through the fold (the guest's table write and the shadow update);
/// resync_each: the guest maps the pages itself (untimed), then one `invalidate` per page;
/// resync_batch: the same with one `invalidate` over all 256 pages;
/// stage2_each: the host remaps one stage-2 page under each of the 256 (unmap + map through
/// the fold: the reverse index finds the IOVA, the shadow entry is refolded).
template <class S1, class S2>
void fold_sync(benchmark::State& st, sync_kind kind) {
    world<S1, S2> w;
    if (!w.ok) return fail(st, "setup failed");
    auto f = w.make_fold(kind == sync_kind::mediated);
    if (!f) return fail(st, "fold");
    constexpr std::uint64_t batch = 256;
    batch_timer timer(st, label<S1, S2>() + ", shadow " + S1::name + " host_heap");
    bool good = true;
    auto check = [&](bool c) { good = good && c; };
    if (kind == sync_kind::stage2_each) {  // the 256 pages stay mapped in stage 1
        for (std::uint64_t i = 0; i < batch; ++i)
            check(w.s1->map(iova_t{sync_iova + i * page}, pa_t{i * page}, length_t{page}, rw).ok());
        f->invalidate_all();
    }
    std::uint64_t round = 0;
    for (auto _ : st) {
        switch (kind) {
        case sync_kind::mediated:
            timer.timed(batch, batch, [&] {
                for (std::uint64_t i = 0; i < batch; ++i)
                    check(f->s1_map(iova_t{sync_iova + i * page}, ipa_t{i * page}, length_t{page}, rw).ok());
            });
            check(f->s1_unmap(iova_t{sync_iova}, length_t{batch * page}).ok());
            break;
        case sync_kind::resync_each:
        case sync_kind::resync_batch:
            for (std::uint64_t i = 0; i < batch; ++i)
                check(w.s1->map(iova_t{sync_iova + i * page}, pa_t{i * page}, length_t{page}, rw).ok());
            if (kind == sync_kind::resync_each) {
                timer.timed(batch, batch, [&] {
                    for (std::uint64_t i = 0; i < batch; ++i)
                        check(f->invalidate(iova_t{sync_iova + i * page}, length_t{page}).ok());
                });
            } else {
                timer.timed(1, batch, [&] { check(f->invalidate(iova_t{sync_iova}, length_t{batch * page}).ok()); });
            }
            check(w.s1->unmap(iova_t{sync_iova}, length_t{batch * page}).ok());
            check(f->invalidate(iova_t{sync_iova}, length_t{batch * page}).ok());
            break;
        case sync_kind::stage2_each: {
            // IPAs i * 4K back both a stage-1 page at i * 64K and one at sync_iova + i * 4K.
            const std::uint64_t to = data_hpa + ((round++ & 1) ? 0 : 0x10000000);
            timer.timed(batch, batch, [&] {
                for (std::uint64_t i = 0; i < batch; ++i) {
                    check(f->s2_unmap(ipa_t{i * page}, length_t{page}).ok());
                    check(f->s2_map(ipa_t{i * page}, pa_t{to + i * page}, length_t{page}, rw).ok());
                }
            });
            break;
        }
        }
        if (!good) break;
    }
    if (!good) return fail(st, "a map, unmap or invalidation failed");
    if (kind == sync_kind::stage2_each && !f->lookup(iova_t{sync_iova + page}).mapped)
        fail(st, "shadow lost a page");
}

template <class S1, class S2>
void register_pair(const std::string& pair) {
    const std::string p = "nested/" + pair + "/";
    auto add = [](const std::string& name, auto fn) { benchmark::RegisterBenchmark(name.c_str(), fn)->UseManualTime(); };
    add(p + "walk_cold", [](benchmark::State& st) { nested_walk<S1, S2>(st, walk_kind::cold); });
    add(p + "walk_cache", [](benchmark::State& st) { nested_walk<S1, S2>(st, walk_kind::walk_cache); });
    add(p + "iotlb_hit", [](benchmark::State& st) { nested_walk<S1, S2>(st, walk_kind::iotlb_hit); });
    add(p + "leaf_walk_cold", [](benchmark::State& st) { nested_walk<S1, S2>(st, walk_kind::cold, true); });
    add(p + "leaf_walk_cache", [](benchmark::State& st) { nested_walk<S1, S2>(st, walk_kind::walk_cache, true); });
    add(p + "shadow_lookup", [](benchmark::State& st) { shadow_lookup<S1, S2>(st); });
    add(p + "sync_mediated_4k", [](benchmark::State& st) { fold_sync<S1, S2>(st, sync_kind::mediated); });
    add(p + "sync_resync_4k", [](benchmark::State& st) { fold_sync<S1, S2>(st, sync_kind::resync_each); });
    add(p + "sync_resync_256x4k", [](benchmark::State& st) { fold_sync<S1, S2>(st, sync_kind::resync_batch); });
    add(p + "sync_stage2_4k", [](benchmark::State& st) { fold_sync<S1, S2>(st, sync_kind::stage2_each); });
}

/// Registered before main() runs the benchmarks (bench_main.cpp registers the format ones).
const bool registered = [] {
    // From the format list's nested pairs (formats/all.hpp): for each stage-2 family (folder),
    // its first variant under the first stage-1 format that sits on it (the other granules are
    // benchmarked single-stage). Named `<stage-1 folder>` when both stages are one family's,
    // else `<stage-1 folder>-on-<stage-2 folder>`.
    std::vector<std::string> families;
    boost::hana::for_each(nested_pairs, [&](auto t) {
        using P = typename decltype(t)::type;
        using S1 = typename P::stage1;
        using S2 = typename P::stage2;
        const std::string s1 = S1::folder, s2 = S2::folder;
        if (std::find(families.begin(), families.end(), s2) != families.end()) return;
        families.push_back(s2);
        register_pair<S1, S2>(s1 == s2 ? s1 : s1 + "-on-" + s2);
    });
    return true;
}();

} // namespace
} // namespace iopgtable::bench
