// SPDX-License-Identifier: MIT
/// @file bench_main.cpp
/// iopgtable_bench: the same benchmarks for every format in `all_formats`, registered at
/// start-up and named `<format>/<variant>/<op>` (README.md lists them). Exits non-zero when a
/// benchmark failed (a map, unmap or translation went wrong).
#include <string>

#include <benchmark/benchmark.h>
#include <boost/hana/for_each.hpp>

#include <iopgtable/formats/all.hpp>

#include "format_benches.hpp"

namespace iopgtable::bench {
namespace {

enum class op {
    store_256,
    map_1,
    unmap_1,
    map_pages_256,
    map_256,
    unmap_256,
    map_block_1,
    unmap_block_1,
    map_pages_block_256,
    map_block_256,
    unmap_block_256,
    iova_to_phys_seq,
    iova_to_phys_rand,
};

template <class F, class M>
void run(benchmark::State& st, const format_setup<F>& s, op o) {
    switch (o) {
    case op::store_256: return store_baseline<F>(st, s);
    case op::map_1: return single_leaf<F, M>(st, s, s.page_lg2, false);
    case op::unmap_1: return single_leaf<F, M>(st, s, s.page_lg2, true);
    case op::map_pages_256: return batched<F, M>(st, s, s.page_lg2, batch_op::map_pages);
    case op::map_256: return batched<F, M>(st, s, s.page_lg2, batch_op::map_range);
    case op::unmap_256: return batched<F, M>(st, s, s.page_lg2, batch_op::unmap);
    case op::map_block_1: return single_leaf<F, M>(st, s, s.block_lg2, false);
    case op::unmap_block_1: return single_leaf<F, M>(st, s, s.block_lg2, true);
    case op::map_pages_block_256: return batched<F, M>(st, s, s.block_lg2, batch_op::map_pages);
    case op::map_block_256: return batched<F, M>(st, s, s.block_lg2, batch_op::map_range);
    case op::unmap_block_256: return batched<F, M>(st, s, s.block_lg2, batch_op::unmap);
    case op::iova_to_phys_seq: return lookups<F, M>(st, s, false);
    case op::iova_to_phys_rand: return lookups<F, M>(st, s, true);
    }
}

template <class F>
void add(const std::string& name, const format_setup<F>& s, op o) {
    benchmark::RegisterBenchmark(name.c_str(), [s, o](benchmark::State& st) {
        if (s.on_host_heap) run<F, host_heap>(st, s, o);
        else run<F, default_memory_t<F>>(st, s, o);
    })->UseManualTime();
}

/// Registers every benchmark of format F (with its representative configuration).
template <class F>
void register_format() {
    const auto setup = format_setup<F>::make();
    if (!setup) return;
    const format_setup<F>& s = *setup;
    const std::string prefix = std::string(F::name) + "/" + variant_label<F>() + "/";

    add(prefix + "store_256", s, op::store_256);
    if (region_layout(s.page_lg2, s.space_lg2).regions > 0) {
        add(prefix + "map_1", s, op::map_1);
        add(prefix + "unmap_1", s, op::unmap_1);
        add(prefix + "map_pages_256", s, op::map_pages_256);
        add(prefix + "map_256", s, op::map_256);
        add(prefix + "unmap_256", s, op::unmap_256);
    }
    if (s.block_lg2 != 0 && region_layout(s.block_lg2, s.space_lg2).regions > 0) {
        add(prefix + "map_block" + size_label(s.block_lg2) + "_1", s, op::map_block_1);
        add(prefix + "unmap_block" + size_label(s.block_lg2) + "_1", s, op::unmap_block_1);
        add(prefix + "map_pages_block" + size_label(s.block_lg2) + "_256", s, op::map_pages_block_256);
        add(prefix + "map_block" + size_label(s.block_lg2) + "_256", s, op::map_block_256);
        add(prefix + "unmap_block" + size_label(s.block_lg2) + "_256", s, op::unmap_block_256);
    }
    add(prefix + "iova_to_phys_seq", s, op::iova_to_phys_seq);
    add(prefix + "iova_to_phys_rand", s, op::iova_to_phys_rand);
}

} // namespace
} // namespace iopgtable::bench

int main(int argc, char** argv) {
    boost::hana::for_each(iopgtable::all_formats, [](auto t) {
        iopgtable::bench::register_format<typename decltype(t)::type>();
    });
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return iopgtable::bench::any_failure ? 1 : 0;
}
