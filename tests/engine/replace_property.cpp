// SPDX-License-Identifier: MIT
// Model-based property (rapidcheck) for replace: random sequences of replace, map and unmap
// (exact and split) over a small window of the input space, on every format, checked against
// the interval-map model after every operation: the outcome, `removed` and `changed`, the
// translation of every page the operation touched and around it, and the full dump.
#include <string>
#include <vector>

#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "support/model_run.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

enum class op_kind { replace, replace_same, map, unmap, unmap_split };

template <class F>
void random_replaces() {
    model_run<F> run;
    const auto& cfg = run.cfg;
    const geometry& g = run.g;
    const auto& sizes = run.sizes;
    const std::uint64_t small = run.small, big = run.big;
    constexpr std::uint64_t regions = model_run<F>::regions;
    auto& pt = run.pt();
    auto& model = run.model;
    RC_LOG() << F::name << " " << describe(g) << "\n";

    // Ranges of a few pages of one size in the window, usually aligned to it; outputs at the
    // input's offset (so that replacing what is there often matches), flipped by the largest
    // size, or off by a smallest page (short ranges only: every leaf is then a smallest page).
    auto gen_range = [&]() {
        const std::uint64_t s = *rc::gen::elementOf(sizes);
        std::uint64_t len = s * *rc::gen::inRange<std::uint64_t>(1, 3);
        if (*rc::gen::inRange(0, 3) == 0) len += small;
        const std::uint64_t a = *rc::gen::inRange(0, 4) == 0 ? small : s;
        const std::uint64_t idx = *rc::gen::inRange<std::uint64_t>(0, std::min<std::uint64_t>(big / a, 16));
        const std::uint64_t off = *rc::gen::arbitrary<bool>() ? big - (idx + 1) * a : idx * a;
        return std::pair{*rc::gen::inRange<std::uint64_t>(0, regions) * big + off, len};
    };
    auto gen_pa = [&](std::uint64_t iova, std::uint64_t len) {
        switch (*rc::gen::inRange(0, 4)) {
        case 0: return len / small <= 1024 ? iova + small : iova;
        case 1: return iova ^ big;
        default: return iova;
        }
    };
    // Mostly two permissions, so that matches happen; sometimes any valid one.
    auto gen_prot = [&]() {
        if (*rc::gen::inRange(0, 4) == 0) return *rc::gen::elementOf(valid_prots());
        return *rc::gen::arbitrary<bool>() ? prot::read | prot::write : prot::read;
    };

    struct last_replace {
        std::uint64_t iova = 0, pa = 0, len = 0;
        prot p = prot::read;
    } previous;
    bool have_previous = false;
    const int ops = *rc::gen::inRange(1, 25);
    for (int n = 0; n < ops; ++n) {
        const op_kind kind = *rc::gen::weightedElement<op_kind>({{5, op_kind::replace},
                                                                 {1, op_kind::replace_same},
                                                                 {2, op_kind::map},
                                                                 {1, op_kind::unmap},
                                                                 {2, op_kind::unmap_split}});
        std::uint64_t iova = 0, len = 0;
        switch (kind) {
        case op_kind::replace:
        case op_kind::replace_same: {
            std::uint64_t pa;
            prot p;
            if (kind == op_kind::replace_same && have_previous) {
                // A part of the last replace, as it was: an exact match unless changed since.
                const std::uint64_t pages = previous.len / small;
                const std::uint64_t first = *rc::gen::inRange<std::uint64_t>(0, pages);
                const std::uint64_t count = *rc::gen::inRange<std::uint64_t>(1, pages - first + 1);
                iova = previous.iova + first * small;
                len = count * small;
                pa = previous.pa + first * small;
                p = previous.p;
            } else {
                std::tie(iova, len) = gen_range();
                pa = gen_pa(iova, len);
                p = gen_prot();
            }
            RC_LOG() << "replace 0x" << std::hex << iova << " -> 0x" << pa << " size 0x" << len << " prot 0x" << to_bits(p);
            const auto got = pt.replace(in_addr<F>(iova), pa_t{pa}, length_t{len}, p);
            const auto want = model.template replace<F>(cfg, iova, pa, len, p);
            RC_LOG() << ": " << outcome(got);
            if (got.ok()) RC_LOG() << " removed 0x" << got->removed << (got->changed ? " changed" : " unchanged");
            RC_LOG() << "\n";
            RC_ASSERT(outcome(got) == outcome(want));
            RC_CLASSIFY(got.ok() && !got->changed, "a replace matched");
            RC_CLASSIFY(got.ok() && got->removed != 0, "a replace removed something");
            if (got.ok()) {
                RC_ASSERT(got->removed == want->removed);
                RC_ASSERT(got->changed == want->changed);
                previous = {iova, pa, len, p};
                have_previous = true;
            }
            break;
        }
        case op_kind::map: {
            std::tie(iova, len) = gen_range();
            const std::uint64_t pa = gen_pa(iova, len);
            const prot p = gen_prot();
            run.map(iova, pa, len, p);
            break;
        }
        case op_kind::unmap:
        case op_kind::unmap_split: {
            std::tie(iova, len) = gen_range();
            run.unmap(iova, len, kind == op_kind::unmap_split);
            break;
        }
        }
        // Every page the operation touched, one page either side, and every leaf's edges.
        std::vector<std::uint64_t> points;
        if (len / small <= 4096)
            for (std::uint64_t off = 0; off <= len; off += small) {
                points.push_back(iova + off);
                points.push_back(iova + off + small / 2);
            }
        if (iova >= small) points.push_back(iova - small);
        for (const auto& [va, l] : model.leaves()) {
            points.push_back(va);
            points.push_back(l.last());
        }
        run.check_points(points);
        run.check_dump();
    }
}

} // namespace

TEMPLATE_LIST_TEST_CASE("random replaces agree with the interval-map model", "[replace][property]", format_list) {
    using F = TestType;
    rc::prop(std::string(F::name) + " replace against the model", [] { random_replaces<F>(); });
}
