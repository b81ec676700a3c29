// SPDX-License-Identifier: MIT
#pragma once
/// @file format_benches.hpp
/// The benchmark bodies, written once for any format F and table memory M (host_heap, or the
/// format's default memory when host_heap cannot hold its tables; see format_setup).
///
/// Every benchmark times a batch of operations between two steady_clock reads and reports it
/// with SetIterationTime (the benchmarks are registered with UseManualTime), so that the work
/// that resets the table between batches (unmapping what a map batch mapped, say) is not
/// counted. Each benchmark sets the counters
///   ns_per_call  — time of one library call,
///   ns_per_page  — time per leaf the call maps, unmaps or stores (a block counts as one leaf),
///   pages_per_call,
///   min_ns_per_call, min_ns_per_page — the same from the fastest batch (Linux's figures also
///                  give a min; it is what survives when other processes share the CPUs).
///
/// Layout. A "region" is `per_call` leaves of one size starting one leaf into a stride-aligned
/// span; a keeper leaf sits just before and just after it, so every table the region needs
/// exists before timing starts and no unmap in the loop can free one (Linux's single-map
/// figure is also the leaf path into existing tables).
#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/engine/profile.hpp>
#include <iopgtable/mem/default_memory.hpp>
#include <iopgtable/mem/host_heap.hpp>

namespace iopgtable::bench {

/// Leaves per batched call (Linux's "256*2^12").
inline constexpr std::uint64_t per_call = 256;
/// Regions one timed batch of batched calls covers (fewer when the IAS is small).
inline constexpr unsigned max_regions = 8;
/// Operations one timed batch of single-leaf calls or lookups performs.
inline constexpr std::uint64_t single_batch = 256;

inline const prot bench_prot = prot::read | prot::write;


/// The variant part of a benchmark name: F::bench_label, else F::granule_name, else the
/// smallest page size.
template <class F>
std::string variant_label() {
    if constexpr (requires { std::string(F::bench_label); }) return F::bench_label;
    else if constexpr (requires { std::string(F::granule_name); }) return F::granule_name;
    else return size_label(F::item_lg2(0));
}

/// A fresh table memory of type M for format F: a host_heap, or the format's default memory.
template <class F, class M>
std::unique_ptr<M> make_memory() {
    if constexpr (std::is_same_v<M, host_heap>) return std::make_unique<host_heap>();
    else return make_default_memory<F>();
}

/// Whether the engine builds a table of `c` in several fresh memories of type M held at once
/// (a configuration that works only for lucky allocation addresses is refused).
template <class F, class M>
bool creates_reliably(const typename F::config& c) {
    std::vector<std::unique_ptr<M>> mems;
    std::vector<page_table<F, M>> tables;  // destroyed before `mems`
    for (int i = 0; i < 4; ++i) {
        mems.push_back(make_memory<F, M>());
        auto t = page_table<F, M>::create(c, *mems.back());
        if (!t) return false;
        tables.push_back(std::move(*t));
    }
    return true;
}

/// What the benchmarks of one format use: its representative configuration, the table memory
/// and the page sizes. The configuration is the sample configuration with the largest IAS, then
/// OAS (the first one when none reaches 39 bits), that the engine can build a table for, on
/// host_heap if it can, else in the format's default memory (low guest RAM for formats whose
/// descriptors cannot hold host pointers).
template <class F>
struct format_setup {
    typename F::config cfg;
    geometry geo;
    bool on_host_heap = true;  ///< false: default_memory_t<F>
    unsigned page_lg2 = 0;     ///< smallest page
    unsigned block_lg2 = 0;    ///< second page size, 0 if the format has one size only
    unsigned space_lg2 = 0;    ///< usable identity-mapped space: min(IAS, OAS)

    static std::optional<format_setup> make() {
        std::vector<std::pair<typename F::config, geometry>> cands;
        for (const auto& c : F::sample_configs())
            if (auto g = F::make_geometry(c)) cands.emplace_back(c, *g);
        // Largest IAS, then OAS, first in sample order among equals; when no configuration
        // reaches 39 bits (small formats such as v7s), simply sample order.
        const bool wide = std::any_of(cands.begin(), cands.end(), [](const auto& c) { return c.second.ias >= 39; });
        if (wide)
            std::stable_sort(cands.begin(), cands.end(), [](const auto& a, const auto& b) {
                return a.second.ias != b.second.ias ? a.second.ias > b.second.ias : a.second.oas > b.second.oas;
            });
        for (const auto& [c, g] : cands) {
            format_setup s{c, g};
            if (creates_reliably<F, host_heap>(c)) s.on_host_heap = true;
            else if (creates_reliably<F, default_memory_t<F>>(c)) s.on_host_heap = false;
            else continue;
            std::uint64_t sizes = g.pgsize_bitmap;
            s.page_lg2 = static_cast<unsigned>(std::countr_zero(sizes));
            sizes &= sizes - 1;
            s.block_lg2 = sizes ? static_cast<unsigned>(std::countr_zero(sizes)) : 0;
            s.space_lg2 = std::min(g.ias, g.oas);
            return s;
        }
        return std::nullopt;
    }
    /// "ias=48 oas=48 levels=4 host_heap" (quirks too, if any): what the benchmark ran on.
    std::string describe() const {
        std::string d = "ias=" + std::to_string(geo.ias) + " oas=" + std::to_string(geo.oas) + " levels=" +
                        std::to_string(geo.levels);
        if constexpr (requires { cfg.quirks; })
            if (cfg.quirks != 0) d += " quirks=" + std::to_string(cfg.quirks);
        return d + (on_host_heap ? " host_heap" : " default_memory");
    }
};

/// Regions of `per_call` leaves of 2^leaf_lg2 bytes (see the file comment).
struct region_layout {
    unsigned leaf_lg2 = 0;
    std::uint64_t stride = 0;  ///< bytes between region starts (a power of two)
    unsigned regions = 0;      ///< 0: the space is too small for even one region

    region_layout(unsigned lg2, unsigned space_lg2) : leaf_lg2(lg2) {
        stride = std::bit_ceil((per_call + 2) << lg2);
        const unsigned stride_lg2 = static_cast<unsigned>(std::countr_zero(stride));
        if (stride_lg2 <= space_lg2)
            regions = static_cast<unsigned>(std::min<std::uint64_t>(max_regions, std::uint64_t{1} << std::min(space_lg2 - stride_lg2, 30u)));
    }
    std::uint64_t leaf() const noexcept { return std::uint64_t{1} << leaf_lg2; }
    std::uint64_t start(unsigned r) const noexcept { return r * stride + leaf(); }
    std::uint64_t bytes() const noexcept { return per_call << leaf_lg2; }
    std::uint64_t keeper_lo(unsigned r) const noexcept { return r * stride; }
    std::uint64_t keeper_hi(unsigned r) const noexcept { return start(r) + bytes(); }
};

using clock = std::chrono::steady_clock;

/// Set when any benchmark failed; main() then exits non-zero (CI runs the benchmarks briefly).
inline bool any_failure = false;

/// Marks the running benchmark as failed with `why`.
inline void fail(benchmark::State& state, const char* why) {
    any_failure = true;
    state.SkipWithError(why);
}

/// Accumulates timed batches and turns them into the counters.
class batch_timer {
public:
    /// `label`: the benchmark's label (its configuration).
    batch_timer(benchmark::State& st, std::string label) : st_(st), label_(std::move(label)) {}
    /// Runs `fn` (which makes `calls` library calls covering `pages` leaves) under the clock.
    template <class Fn>
    void timed(std::uint64_t calls, std::uint64_t pages, Fn&& fn) {
        const auto t0 = clock::now();
        fn();
        const auto t1 = clock::now();
        const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
        st_.SetIterationTime(ns * 1e-9);
        ns_ += ns;
        calls_ += calls;
        pages_ += pages;
        if (calls_ == calls || ns / static_cast<double>(calls) < best_call_ns_) {
            best_call_ns_ = ns / static_cast<double>(calls);
            best_page_ns_ = ns / static_cast<double>(pages);
        }
    }
    ~batch_timer() {
        st_.SetLabel(label_);
        if (calls_ == 0) return;
        st_.counters["ns_per_call"] = ns_ / static_cast<double>(calls_);
        st_.counters["ns_per_page"] = ns_ / static_cast<double>(pages_);
        st_.counters["pages_per_call"] = static_cast<double>(pages_) / static_cast<double>(calls_);
        st_.counters["min_ns_per_call"] = best_call_ns_;
        st_.counters["min_ns_per_page"] = best_page_ns_;
    }
    batch_timer(const batch_timer&) = delete;
    batch_timer& operator=(const batch_timer&) = delete;
    /// ns per call of the fastest batch so far (0 before the first).
    double min_ns_per_call() const noexcept { return best_call_ns_; }

private:
    benchmark::State& st_;
    std::string label_;
    double ns_ = 0, best_call_ns_ = 0, best_page_ns_ = 0;
    std::uint64_t calls_ = 0, pages_ = 0;
};

/// A reference operation timed in the same iterations as a benchmark, untimed for Google
/// Benchmark: its fastest batch is `ref_min_ns_per_call` and the benchmark's fastest batch over
/// it is `ratio` (with `per` > 1: the reference's cost scaled by `per` first, e.g. 6 walks).
class reference_timer {
public:
    template <class Fn>
    void timed(std::uint64_t calls, Fn&& fn) {
        const auto t0 = clock::now();
        fn();
        const double ns = std::chrono::duration<double, std::nano>(clock::now() - t0).count() / static_cast<double>(calls);
        if (min_ == 0 || ns < min_) min_ = ns;
    }
    double min_ns_per_call() const noexcept { return min_; }
    /// Sets `ref_min_ns_per_call` and `ratio` on `st` for the benchmark timed by `timer`.
    void report(benchmark::State& st, const batch_timer& timer, double per = 1) const {
        st.counters["ref_min_ns_per_call"] = min_;
        if (min_ > 0) st.counters["ratio"] = timer.min_ns_per_call() / (min_ * per);
    }

private:
    double min_ = 0;
};

/// One page table of F in its own table memory M, identity mapping (pa = iova).
template <class F, class M>
struct bench_table {
    using table = page_table<F, M>;
    using va = typename F::input_address;

    std::unique_ptr<M> mem = make_memory<F, M>();
    std::optional<table> pt;

    explicit bench_table(const format_setup<F>& s) {
        auto t = table::create(s.cfg, *mem);
        if (t) pt.emplace(std::move(*t));
    }
    bool map_pages(std::uint64_t iova, unsigned lg2, std::uint64_t count) {
        auto r = pt->map_pages(va{iova}, pa_t{iova}, length_t{std::uint64_t{1} << lg2}, count, bench_prot);
        return r.ok();
    }
    bool map(std::uint64_t iova, std::uint64_t bytes) { return pt->map(va{iova}, pa_t{iova}, length_t{bytes}, bench_prot).ok(); }
    bool unmap(std::uint64_t iova, std::uint64_t bytes) {
        auto r = pt->unmap(va{iova}, length_t{bytes});
        return r.ok() && r->value == bytes;
    }
    /// Maps the keeper leaves of every region of `l`.
    bool keep(const region_layout& l) {
        for (unsigned r = 0; r < l.regions; ++r)
            if (!map_pages(l.keeper_lo(r), l.leaf_lg2, 1) || !map_pages(l.keeper_hi(r), l.leaf_lg2, 1)) return false;
        return true;
    }
};

/// Single-leaf map (`unmap` false) or unmap: `single_batch` calls, one leaf each, into one
/// region whose tables exist.
template <class F, class M>
void single_leaf(benchmark::State& state, const format_setup<F>& s, unsigned lg2, bool unmap) {
    bench_table<F, M> t(s);
    region_layout l(lg2, s.space_lg2);
    if (!t.pt || !t.keep(l)) return fail(state, "setup failed");
    const std::uint64_t base = l.start(0), leaf = l.leaf();
    static_assert(single_batch <= per_call);
    if (unmap && !t.map_pages(base, lg2, single_batch)) return fail(state, "setup map failed");
    batch_timer timer(state, s.describe());
    bool ok = true;
    for (auto _ : state) {
        if (!unmap) {
            timer.timed(single_batch, single_batch, [&] {
                for (std::uint64_t i = 0; i < single_batch; ++i)
                    ok &= t.map_pages(base + i * leaf, lg2, 1);
            });
            ok &= t.unmap(base, single_batch * leaf);
        } else {
            timer.timed(single_batch, single_batch, [&] {
                for (std::uint64_t i = 0; i < single_batch; ++i) ok &= t.unmap(base + i * leaf, leaf);
            });
            ok &= t.map_pages(base, lg2, single_batch);
        }
        if (!ok) return fail(state, "a map or unmap failed");
    }
}

enum class batch_op { map_pages, map_range, unmap };

/// `per_call` leaves of 2^lg2 bytes in one call, one call per region, every region in one
/// timed batch.
template <class F, class M>
void batched(benchmark::State& state, const format_setup<F>& s, unsigned lg2, batch_op op) {
    bench_table<F, M> t(s);
    region_layout l(lg2, s.space_lg2);
    if (!t.pt || !t.keep(l)) return fail(state, "setup failed");
    auto map_all = [&](batch_op how) {
        bool ok = true;
        for (unsigned r = 0; r < l.regions; ++r)
            ok &= how == batch_op::map_range ? t.map(l.start(r), l.bytes()) : t.map_pages(l.start(r), lg2, per_call);
        return ok;
    };
    auto unmap_all = [&] {
        bool ok = true;
        for (unsigned r = 0; r < l.regions; ++r) ok &= t.unmap(l.start(r), l.bytes());
        return ok;
    };
    if (op == batch_op::unmap && !map_all(batch_op::map_pages)) return fail(state, "setup map failed");
    batch_timer timer(state, s.describe());
    bool ok = true;
    for (auto _ : state) {
        if (op == batch_op::unmap) {
            timer.timed(l.regions, l.regions * per_call, [&] { ok &= unmap_all(); });
            ok &= map_all(batch_op::map_pages);
        } else {
            timer.timed(l.regions, l.regions * per_call, [&] { ok &= map_all(op); });
            ok &= unmap_all();
        }
        if (!ok) return fail(state, "a map or unmap failed");
    }
}

/// Span of the iova_to_phys benchmarks: 1 GiB, or the largest power of two that fits.
template <class F>
unsigned lookup_span_lg2(const format_setup<F>& s) {
    return std::min(30u, s.space_lg2 - 1);
}

/// iova_to_phys over a span of smallest-page mappings, in address order (`random` false) or
/// at precomputed random addresses.
template <class F, class M>
void lookups(benchmark::State& state, const format_setup<F>& s, bool random) {
    bench_table<F, M> t(s);
    const unsigned span_lg2 = lookup_span_lg2(s);
    const std::uint64_t base = std::uint64_t{1} << span_lg2;  // [span, 2 span): clear of address 0
    const std::uint64_t pages = std::uint64_t{1} << (span_lg2 - s.page_lg2);
    if (!t.pt || !t.map_pages(base, s.page_lg2, pages)) return fail(state, "setup failed");

    constexpr std::size_t n_addr = std::size_t{1} << 20;
    std::vector<std::uint64_t> addr(n_addr);
    std::mt19937_64 rng(42);
    for (std::size_t i = 0; i < n_addr; ++i)
        addr[i] = base + (random ? rng() & ((std::uint64_t{1} << span_lg2) - 1)
                                 : ((i % pages) << s.page_lg2) + ((i * 8) & ((std::uint64_t{1} << s.page_lg2) - 1)));
    for (std::size_t i = 0; i < 64; ++i) {
        auto pa = t.pt->iova_to_phys(typename F::input_address{addr[i]});
        if (!pa || pa->value != addr[i]) return fail(state, "iova_to_phys gave a wrong answer");
    }
    batch_timer timer(state, s.describe() + " span=" + size_label(span_lg2));
    std::size_t next = 0;
    for (auto _ : state) {
        timer.timed(single_batch, single_batch, [&] {
            for (std::uint64_t i = 0; i < single_batch; ++i) {
                auto pa = t.pt->iova_to_phys(typename F::input_address{addr[next++ & (n_addr - 1)]});
                benchmark::DoNotOptimize(pa);
            }
        });
    }
}

/// The baseline: `per_call` words of F::word stored with a plain loop into a buffer the size
/// of a leaf table (at least `per_call` words). One call = one loop of `per_call` stores.
template <class F>
void store_baseline(benchmark::State& state, const format_setup<F>& s) {
    using word = typename F::word;
    const std::size_t bytes = std::max<std::size_t>(level_table_bytes<F>(0), per_call * sizeof(word));
    std::unique_ptr<word, decltype(&std::free)> buf(static_cast<word*>(std::aligned_alloc(bytes, bytes)), &std::free);
    if (!buf) return fail(state, "allocation failed");
    word* p = buf.get();
    std::fill(p, p + bytes / sizeof(word), word{0});
    benchmark::DoNotOptimize(p);
    const word leaf = F::make_leaf(s.cfg, 0, s.page_lg2, 0, bench_prot);
    const unsigned shift = s.page_lg2;
    constexpr std::uint64_t loops = 64;
    batch_timer timer(state, s.describe());
    for (auto _ : state) {
        timer.timed(loops, loops * per_call, [&] {
            for (std::uint64_t k = 0; k < loops; ++k) {
                for (std::uint64_t i = 0; i < per_call; ++i)
                    p[i] = static_cast<word>(leaf | (static_cast<word>(i) << shift));
                benchmark::ClobberMemory();
            }
        });
    }
}

} // namespace iopgtable::bench
