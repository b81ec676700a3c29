// SPDX-License-Identifier: MIT
// Model-based property (rapidcheck): random sequences of map, map_pages, unmap (exact and
// split) and translations over a small window of the input space, so that operations collide,
// checked against the interval-map model after every operation: the outcome (ok or the error's
// name), the bytes unmapped, the translation at every leaf's edges and at random points, and
// the full dump of the table.
#include <string>
#include <vector>

#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "support/model_run.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

enum class op_kind { map, map_pages, unmap, unmap_split, bad_map };

/// One run of the property for format F.
template <class F>
void random_operations() {
    model_run<F> run;
    const geometry& g = run.g;
    const auto& sizes = run.sizes;
    const std::uint64_t small = run.small, big = run.big;
    constexpr std::uint64_t regions = model_run<F>::regions;
    auto& pt = run.pt();
    auto& model = run.model;
    const bool at_top = *rc::gen::resize(100, rc::gen::arbitrary<bool>());
    const std::uint64_t window = at_top ? ias_last(g) - (regions * big - 1) : 0;
    RC_LOG() << F::name << " " << describe(g) << (at_top ? " window at the top" : " window at 0") << "\n";

    // A range in the window: k pages of a size (plus maybe one smallest page), usually aligned
    // to that size, sometimes only to a smaller one, a few slots from the start or the end of
    // one of the window's regions.
    auto gen_range = [&]() {
        const std::uint64_t s = *rc::gen::elementOf(sizes);
        std::uint64_t len = s * *rc::gen::inRange<std::uint64_t>(1, 4);
        if (*rc::gen::inRange(0, 3) == 0) len += small;
        std::uint64_t a = s;
        if (*rc::gen::inRange(0, 4) == 0) {
            std::vector<std::uint64_t> aligns;
            for (std::uint64_t x : sizes)
                if (x < s) aligns.push_back(x);
            if (!aligns.empty()) a = *rc::gen::elementOf(aligns);
        }
        const std::uint64_t idx = *rc::gen::inRange<std::uint64_t>(0, std::min<std::uint64_t>(big / a, 16));
        const std::uint64_t off = *rc::gen::arbitrary<bool>() ? big - (idx + 1) * a : idx * a;
        const std::uint64_t region = *rc::gen::inRange<std::uint64_t>(0, regions);
        return std::pair{window + region * big + off, len};
    };
    // Output addresses: the input's offset in the window (so that outputs collide too), that
    // flipped by the largest size, the end of the output space (or just beyond it), or - for
    // short ranges only, as every leaf then is a smallest page - misaligned by a smallest page.
    auto gen_pa = [&](std::uint64_t iova, std::uint64_t len) {
        const bool short_range = len / small <= 1024;
        const std::uint64_t off = iova & (big - 1);
        switch (*rc::gen::inRange(0, 4)) {
        case 0: return iova - window + (short_range ? small : 0);
        case 1: return oas_end(g) - ((off + len + big - 1) & ~(big - 1)) + off + (*rc::gen::arbitrary<bool>() ? big : 0);
        case 2: return (iova - window) ^ big;
        default: return iova - window;
        }
    };
    auto gen_prot = [&]() {
        if (*rc::gen::inRange(0, 10) == 0) return prot_from_bits(*rc::gen::inRange<std::uint32_t>(0, 0x80));
        return *rc::gen::elementOf(valid_prots());
    };
    // Unmap ranges: often a model leaf (whole, its inside, or straddling its start or end).
    auto gen_unmap_range = [&]() {
        if (model.leaves().empty() || *rc::gen::arbitrary<bool>()) return gen_range();
        std::vector<model_leaf> ls;
        for (const auto& [va, l] : model.leaves()) ls.push_back(l);
        const model_leaf l = *rc::gen::elementOf(ls);
        switch (*rc::gen::inRange(0, 4)) {
        case 0: return std::pair{l.iova, l.size()};
        case 1: return std::pair{l.iova + small, std::max(small, l.size() - 2 * small)};
        case 2: return std::pair{l.iova - small, 2 * small};
        default: return std::pair{l.last() + 1 - small, l.size()};
        }
    };

    const int ops = *rc::gen::inRange(1, 30);
    for (int n = 0; n < ops; ++n) {
        const op_kind kind = *rc::gen::weightedElement<op_kind>(
            {{4, op_kind::map}, {1, op_kind::map_pages}, {2, op_kind::unmap}, {2, op_kind::unmap_split}, {1, op_kind::bad_map}});
        switch (kind) {
        case op_kind::map:
        case op_kind::bad_map: {
            auto [iova, len] = gen_range();
            std::uint64_t pa = gen_pa(iova, len);
            prot p = gen_prot();
            if (kind == op_kind::bad_map) {
                switch (*rc::gen::inRange(0, 4)) {
                case 0: iova += small / 2; break;
                case 1: len = *rc::gen::arbitrary<bool>() ? 0 : len + small / 2; break;
                case 2: p = prot::none; break;
                default: iova = ias_last(g) - (small - 1); break;
                }
            }
            run.map(iova, pa, len, p);
            break;
        }
        case op_kind::map_pages: {
            const std::uint64_t pg = *rc::gen::elementOf(sizes);
            const std::uint64_t count = *rc::gen::inRange<std::uint64_t>(1, 5);
            auto [iova, len] = gen_range();
            iova &= ~(pg - 1);
            const std::uint64_t pa = gen_pa(iova, pg * count) & ~(pg - 1);
            const prot p = *rc::gen::elementOf(valid_prots());
            RC_LOG() << "map_pages 0x" << std::hex << iova << " -> 0x" << pa << " 0x" << pg << " x " << std::dec << count;
            const auto got = pt.map_pages(in_addr<F>(iova), pa_t{pa}, length_t{pg}, count, p);
            const auto want = model.map_pages(iova, pa, pg, count, p);
            RC_LOG() << ": " << outcome(got) << "\n";
            RC_ASSERT(outcome(got) == outcome(want));
            if (got.ok()) RC_ASSERT(got->value == want->value);
            break;
        }
        case op_kind::unmap:
        case op_kind::unmap_split: {
            auto [iova, len] = gen_unmap_range();
            run.unmap(iova, len, kind == op_kind::unmap_split);
            break;
        }
        }

        // Translations at every leaf's edges and at random points of the window.
        std::vector<std::uint64_t> points;
        for (const auto& [va, l] : model.leaves()) {
            points.push_back(va);
            points.push_back(l.last());
            points.push_back(l.last() + 1);
            if (va > 0) points.push_back(va - 1);
        }
        for (int i = 0; i < 8; ++i)
            points.push_back(window + *rc::gen::inRange<std::uint64_t>(0, regions * big / small) * small +
                             *rc::gen::inRange<std::uint64_t>(0, small));
        run.check_points(points);
        run.check_dump();
    }
    // Everything unmapped and reclaimed: the root alone.
    for (const auto& [va, l] : model.leaves()) {
        const auto u = pt.unmap(in_addr<F>(va), length_t{l.size()});
        RC_ASSERT(u.ok());
        RC_ASSERT(u->value == l.size());
    }
    RC_ASSERT(dump(pt).empty());
    pt.reclaim();
    RC_ASSERT(pt.table_bytes() == pt.top_table_bytes());
    RC_ASSERT(run.mem->bytes_in_use() == root_only_bytes(pt));
}

} // namespace

TEMPLATE_LIST_TEST_CASE("random operations agree with the interval-map model", "[property]", format_list) {
    using F = TestType;
    rc::prop(std::string(F::name) + " against the model", [] { random_operations<F>(); });
}
