// SPDX-License-Identifier: MIT
#pragma once
/// @file model_run.hpp
/// One run of a model-based property (engine/model_property.cpp, engine/replace_property.cpp):
/// a sample configuration of F that rapidcheck picks, a table in test memory and the reference
/// model beside it; operations applied to both and compared, then the table checked against
/// the model (translations, lookups, the whole dump). Failures are rapidcheck failures.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <rapidcheck.h>

#include "checks.hpp"
#include "format_list.hpp"
#include "reference_model.hpp"

namespace iopgtable::test {

/// "ok" or the error's name.
template <class T>
std::string outcome(const result<T>& r) {
    return r.ok() ? std::string("ok") : std::string(to_string(r.error()));
}

template <class F>
class model_run {
public:
    /// The window the run works in: this many of the largest page size (`big`).
    static constexpr std::uint64_t regions = 4;

    model_run() : cfg(pick_config()), g(geometry_of(cfg)), sizes(page_sizes_upto(g, largest_page(g, regions))), model(g) {
        RC_ASSERT(!sizes.empty());
        small = sizes.front();
        big = sizes.back();
        RC_ASSERT(ias_end(g) / regions >= big);
        auto created = page_table<F, test_memory<F>>::create(cfg, *mem);
        RC_ASSERT(created.ok());
        table.emplace(std::move(created).value());
    }

    typename F::config cfg;
    geometry g;
    /// Page sizes up to the largest of which `regions` fit (all of them unless pages reach near
    /// the top of the input space), ascending; `small` and `big` are the first and the last.
    std::vector<std::uint64_t> sizes;
    std::uint64_t small = 0, big = 0;
    std::unique_ptr<test_memory<F>> mem = make_test_memory<F>();
    std::optional<page_table<F, test_memory<F>>> table;
    reference_model model;

    page_table<F, test_memory<F>>& pt() { return *table; }

    /// map on both; the same outcome (F::check_prot refuses what the model cannot know of).
    void map(std::uint64_t iova, std::uint64_t pa, std::uint64_t len, prot p) {
        RC_LOG() << "map 0x" << std::hex << iova << " -> 0x" << pa << " size 0x" << len << " prot 0x" << to_bits(p);
        const auto got = pt().map(in_addr<F>(iova), pa_t{pa}, length_t{len}, p);
        const auto check = F::check_prot(cfg, p);
        const auto want = check.ok() || !prot_valid(p) || len == 0 ? model.map(iova, pa, len, p) : check;
        RC_LOG() << ": " << outcome(got) << "\n";
        RC_ASSERT(outcome(got) == outcome(want));
    }
    /// unmap (exact or splitting) on both; the same outcome and bytes.
    void unmap(std::uint64_t iova, std::uint64_t len, bool split) {
        RC_LOG() << (split ? "unmap split 0x" : "unmap 0x") << std::hex << iova << " size 0x" << len;
        const auto got = pt().unmap(in_addr<F>(iova), length_t{len}, split ? unmap_mode::split : unmap_mode::exact);
        const auto want = model.unmap(iova, len, split);
        RC_LOG() << ": " << outcome(got);
        if (got.ok()) RC_LOG() << " 0x" << got->value;
        RC_LOG() << "\n";
        RC_ASSERT(outcome(got) == outcome(want));
        if (got.ok()) RC_ASSERT(got->value == want->value);
    }

    /// At each of `points` (those inside the input space): iova_to_phys as the model
    /// translates, and lookup_leaf (the DMA path's walk) telling what lookup tells of the leaf.
    void check_points(const std::vector<std::uint64_t>& points) {
        for (std::uint64_t va : points) {
            if (va >= ias_end(g)) continue;
            const auto got = pt().iova_to_phys(in_addr<F>(va));
            const auto want = model.translate(va);
            RC_ASSERT(got.has_value() == want.has_value());
            if (got) RC_ASSERT(got->value == *want);
            const leaf_translation leaf = pt().lookup_leaf(in_addr<F>(va));
            const auto full = pt().lookup(in_addr<F>(va));
            RC_ASSERT(leaf.mapped() == got.has_value());
            RC_ASSERT(leaf.mapped() == (full.status == walk_status::mapped));
            if (leaf.mapped()) {
                RC_ASSERT(leaf.oa == got->value);
                RC_ASSERT(unsigned{leaf.size_lg2} == full.size_lg2);
                RC_ASSERT(unsigned{leaf.level} == full.level);
                RC_ASSERT(leaf.perm == full.perm);
            }
        }
    }
    /// The table's leaves, entry by entry, are the model's.
    void check_dump() { RC_ASSERT(dump_difference(dump(pt()), model.expected_dump<F>(cfg)) == ""); }

private:
    static typename F::config pick_config() {
        const auto cfgs = F::sample_configs();
        RC_ASSERT(!cfgs.empty());
        return cfgs[*rc::gen::resize(100, rc::gen::inRange<std::size_t>(0, cfgs.size()))];
    }
    static geometry geometry_of(const typename F::config& c) {
        const auto r = F::make_geometry(c);
        RC_ASSERT(r.ok());
        return *r;
    }
};

} // namespace iopgtable::test
