// SPDX-License-Identifier: MIT
// The cache contract: after the invalidation the sharing protocol requires no stale translation
// is returned; a newly mapped entry needs none. Each stale case is also shown to be stale
// without the invalidation, so the tests would notice caches that do nothing.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/formats/vtd_sl.hpp>

#include "nested/nested_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

template <class S1 = arm_lpae_s1_4k, class S2 = arm_lpae_s2_4k>
struct cached_world : two_stage<S1, S2> {
    nested::walk_cache walks;
    nested::translation_cache tlb;
    typename two_stage<S1, S2>::translator cached = this->make_translator({&walks, &tlb, 1});
    typename two_stage<S1, S2>::translator cold = this->make_translator();

    /// The cached translator's output for `iova` (0 on a fault).
    std::uint64_t pa(std::uint64_t iova, nested::access_request a = rd) {
        auto r = cached.translate(iova_t{iova}, a);
        return r.ok() ? r->output.value : 0;
    }
    /// The same from a translator without caches.
    std::uint64_t truth(std::uint64_t iova, nested::access_request a = rd) {
        auto r = cold.translate(iova_t{iova}, a);
        return r.ok() ? r->output.value : 0;
    }
};

} // namespace

TEST_CASE("IOTLB: a removed or changed stage-1 entry is gone after INVALIDATE", "[nested][cache]") {
    cached_world<> w;
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x400000}, rw).ok());
    REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x200000}, length_t{0x4000}, rw).ok());
    REQUIRE(w.pa(0x11000) == data_hpa + 0x1000);

    SECTION("removal") {
        REQUIRE(w.s1->unmap(iova_t{0x11000}, length_t{0x1000}).ok());
        CHECK(w.pa(0x11000) == data_hpa + 0x1000);  // stale until invalidated
        w.cached.invalidate(iova_t{0x11000}, length_t{0x1000});
        CHECK(w.pa(0x11000) == 0);
        CHECK(w.pa(0x10000) == data_hpa);
    }
    SECTION("change of output and permissions") {
        REQUIRE(w.s1->unmap(iova_t{0x11000}, length_t{0x1000}).ok());
        REQUIRE(w.s1->map(iova_t{0x11000}, pa_t{0x300000}, length_t{0x1000}, prot::read).ok());
        CHECK(w.pa(0x11000, wr) == data_hpa + 0x1000);  // stale
        w.cached.invalidate(iova_t{0x11000}, length_t{0x1000});
        CHECK(w.pa(0x11000, wr) == 0);
        CHECK(w.pa(0x11000) == data_hpa + 0x100000);
        CHECK(w.pa(0x11000) == w.truth(0x11000));
    }
    SECTION("context invalidation and invalidate all") {
        REQUIRE(w.s1->unmap(iova_t{0x10000}, length_t{0x4000}).ok());
        w.cached.invalidate_context();
        CHECK(w.pa(0x11000) == 0);
        REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x300000}, length_t{0x1000}, rw).ok());
        CHECK(w.pa(0x10000) == data_hpa + 0x100000);
        REQUIRE(w.s1->unmap(iova_t{0x10000}, length_t{0x1000}).ok());
        w.cached.invalidate_all();
        CHECK(w.pa(0x10000) == 0);
    }
}

TEST_CASE("IOTLB: a new mapping needs no invalidation (faults are never cached)", "[nested][cache]") {
    cached_world<> w;
    CHECK(w.pa(0x10000) == 0);  // stage-1 fault
    REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x200000}, length_t{0x200000}, rw).ok());
    CHECK(w.pa(0x10000) == 0);  // stage-2 fault now
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x1000}, rw).ok());
    CHECK(w.pa(0x10000) == data_hpa);
    CHECK(w.pa(0x11000) == 0);  // next page: stage 2 still faults
    REQUIRE(w.s2->map(ipa_t{0x201000}, pa_t{data_hpa + 0x5000}, length_t{0x1000}, rw).ok());
    CHECK(w.pa(0x11000) == data_hpa + 0x5000);
    CHECK(w.tlb.size() == 2);
    // A stage-1 table the host took away and gave back (a new stage-2 mapping) needs nothing either.
    const std::uint64_t leaf_table = w.s1->lookup(iova_t{0x20000}).entry_address.value & ~std::uint64_t{0xfff};
    REQUIRE(w.s2->unmap(ipa_t{leaf_table}, length_t{0x1000}).ok());
    w.cached.invalidate_stage2(ipa_t{leaf_table}, length_t{0x1000});
    CHECK(w.pa(0x10000) == 0);
    REQUIRE(w.s2->map(ipa_t{leaf_table}, pa_t{window_hpa + (leaf_table - window_ipa)}, length_t{0x1000}, rw).ok());
    CHECK(w.pa(0x10000) == data_hpa);
}

TEST_CASE("IOTLB: blocks are invalidated whole by any address inside them", "[nested][cache]") {
    cached_world<> w;
    // A stage-1 2M block over stage-2 4K pages: cached as 4K pieces.
    REQUIRE(w.s1->map(iova_t{0x400000}, pa_t{0x800000}, length_t{0x200000}, rw).ok());
    REQUIRE(w.s2->map_pages(ipa_t{0x800000}, pa_t{data_hpa}, length_t{0x1000}, 512, rw).ok());
    for (std::uint64_t off : {0x0, 0x1000, 0x1ff000}) REQUIRE(w.pa(0x400000 + off) == data_hpa + off);
    CHECK(w.tlb.size() == 3);
    // The guest replaces the block with pages elsewhere and invalidates by one address of it.
    REQUIRE(w.s1->unmap(iova_t{0x400000}, length_t{0x200000}).ok());
    REQUIRE(w.s1->map_pages(iova_t{0x400000}, pa_t{0x801000}, length_t{0x1000}, 512, rw).ok());
    CHECK(w.pa(0x5ff000) == data_hpa + 0x1ff000);  // stale piece
    w.cached.invalidate(iova_t{0x400000}, length_t{0x1000});
    CHECK(w.tlb.size() == 0);
    CHECK(w.pa(0x400000) == data_hpa + 0x1000);
    CHECK(w.pa(0x5fe000) == data_hpa + 0x1ff000);
    CHECK(w.pa(0x5ff000) == 0);  // IPA 0xa00000: not mapped in stage 2
}

TEST_CASE("stage-2 changes: the host's invalidation drops walk-cache entries and translations", "[nested][cache]") {
    cached_world<> w;
    REQUIRE(w.s1->map(iova_t{0x10000}, pa_t{0x200000}, length_t{0x4000}, rw).ok());
    REQUIRE(w.s1->map(iova_t{0x40000000}, pa_t{0x40000000 + window_size}, length_t{0x200000}, rw).ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());  // a 2M block
    REQUIRE(w.s2->map(ipa_t{0x40000000 + window_size}, pa_t{data_hpa + 0x40000000}, length_t{0x200000}, rw).ok());
    REQUIRE(w.pa(0x10000) == data_hpa);
    REQUIRE(w.pa(0x12000) == data_hpa + 0x2000);
    REQUIRE(w.pa(0x13000) == data_hpa + 0x3000);
    REQUIRE(w.pa(0x40100000) == data_hpa + 0x40100000);

    SECTION("remapping part of a stage-2 block") {
        REQUIRE(w.s2->unmap(ipa_t{0x203000}, length_t{0x1000}, unmap_mode::split).ok());
        REQUIRE(w.s2->map(ipa_t{0x203000}, pa_t{data_hpa + 0x100000}, length_t{0x1000}, rw).ok());
        CHECK(w.pa(0x13000) == data_hpa + 0x3000);  // stale
        w.cached.invalidate_stage2(ipa_t{0x203000}, length_t{0x1000});
        CHECK(w.pa(0x13000) == data_hpa + 0x100000);
        // The other pieces came from the same 2M stage-2 block and went too (no harm: walked again).
        CHECK(w.tlb.size() == 2);  // 0x13000, and the 0x40100000 block that did not use the range
        CHECK(w.pa(0x12000) == data_hpa + 0x2000);
    }
    SECTION("write permission taken away by stage 2") {
        REQUIRE(w.s2->unmap(ipa_t{0x200000}, length_t{0x200000}).ok());
        REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, prot::read).ok());
        CHECK(w.pa(0x10000, wr) == data_hpa);  // stale
        w.cached.invalidate_stage2(ipa_t{0x200000}, length_t{0x200000});
        CHECK(w.pa(0x10000, wr) == 0);
        auto f = w.cached.translate(iova_t{0x10000}, wr);
        REQUIRE_FALSE(f.ok());
        CHECK(f.error().stage == 2);
        CHECK(f.error().reason == nested::fault_reason::permission);
    }
    SECTION("moving a stage-1 table to another host page with other contents") {
        // The guest's level-0 table that maps 0x10000: copy it to a free window page (same IPA,
        // new HPA) with one entry pointing elsewhere, as a host migrating guest memory might.
        const std::uint64_t table = w.s1->lookup(iova_t{0x10000}).entry_address.value & ~std::uint64_t{0xfff};
        const std::uint64_t old_hpa = window_hpa + (table - window_ipa);
        const std::uint64_t new_hpa = window_hpa + window_size - 0x1000;
        std::uint8_t copy[0x1000];
        REQUIRE(w.host.read(pa_t{old_hpa}, copy, sizeof copy));
        std::uint64_t e;
        std::memcpy(&e, copy + 0x10 * 8, 8);  // entry of 0x10000
        e += 0x1000;                           // now IPA 0x201000
        std::memcpy(copy + 0x10 * 8, &e, 8);
        REQUIRE(w.host.write(pa_t{new_hpa}, copy, sizeof copy));
        REQUIRE(w.s2->unmap(ipa_t{table}, length_t{0x1000}).ok());
        REQUIRE(w.s2->map(ipa_t{table}, pa_t{new_hpa}, length_t{0x1000}, rw).ok());
        CHECK(w.pa(0x10000) == data_hpa);  // stale: the IOTLB still has the old walk's result
        w.cached.invalidate_stage2(ipa_t{table}, length_t{0x1000});
        CHECK(w.pa(0x10000) == data_hpa + 0x1000);
        CHECK(w.pa(0x10000) == w.truth(0x10000));
        CHECK(w.pa(0x40100000) == data_hpa + 0x40100000);  // walked through other tables: kept
        CHECK(w.tlb.hits() >= 2);
    }
}

TEST_CASE("contexts sharing one stage 2 and one IOTLB are invalidated separately", "[nested][cache]") {
    cached_world<> w;
    // A second guest stage-1 table (context 2) in the same window.
    auto other = two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k>::s1_table::create(lpae_config{}, *w.gmem);
    REQUIRE(other.ok());
    auto t2 = two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k>::translator::create(lpae_config{}, ipa_t{other->root().value},
                                                                          w.stage2(), {&w.walks, &w.tlb, 2});
    REQUIRE(t2.ok());
    REQUIRE(w.s2->map(ipa_t{0x200000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x1000}, rw).ok());
    REQUIRE(other->map(iova_t{0x1000}, pa_t{0x201000}, length_t{0x1000}, rw).ok());
    REQUIRE(w.pa(0x1000) == data_hpa);
    REQUIRE(t2->translate(iova_t{0x1000}, rd)->output.value == data_hpa + 0x1000);
    REQUIRE(w.s1->unmap(iova_t{0x1000}, length_t{0x1000}).ok());
    REQUIRE(other->unmap(iova_t{0x1000}, length_t{0x1000}).ok());
    t2->invalidate(iova_t{0x1000}, length_t{0x1000});  // context 2 only
    CHECK(w.pa(0x1000) == data_hpa);                    // context 1: still stale
    CHECK_FALSE(t2->translate(iova_t{0x1000}, rd).ok());
    w.cached.invalidate_context();
    CHECK(w.pa(0x1000) == 0);
}

TEST_CASE("VT-d: the same contract for first stage over second stage", "[nested][cache]") {
    cached_world<vtd_fl, vtd_sl> w;
    REQUIRE(w.s1->map(iova_t{0x200000}, pa_t{0x400000}, length_t{0x200000}, rw).ok());  // 2M leaf
    REQUIRE(w.s2->map(ipa_t{0x400000}, pa_t{data_hpa}, length_t{0x200000}, rw).ok());   // 2M leaf
    auto r = w.cached.translate(iova_t{0x300000}, rd);
    REQUIRE(r.ok());
    CHECK(r->size_lg2 == 21);
    CHECK(w.cached.translate(iova_t{0x2fffff}, wr)->cached);
    REQUIRE(w.s2->unmap(ipa_t{0x400000}, length_t{0x200000}).ok());
    CHECK(w.pa(0x200000) == data_hpa);
    w.cached.invalidate_stage2(ipa_t{0x5ff000}, length_t{0x1000});
    CHECK(w.pa(0x200000) == 0);
    REQUIRE(w.s2->map(ipa_t{0x400000}, pa_t{data_hpa + 0x400000}, length_t{0x200000}, rw).ok());
    CHECK(w.pa(0x200000) == data_hpa + 0x400000);
}

namespace {
/// The walk cache as its contract states it, by the most direct means: a fully associative
/// array scanned in full, replaced round-robin.
struct linear_walk_cache {
    std::vector<nested::walk_cache::entry> e;
    std::size_t next = 0;
    explicit linear_walk_cache(std::size_t n) : e(n) {}
    static bool covers(const nested::walk_cache::entry& x, std::uint64_t ipa) {
        return x.valid && (ipa >> x.size_lg2) == (x.ipa_base >> x.size_lg2);
    }
    void insert(nested::walk_cache::entry x) {
        x.valid = true;
        e[next] = x;
        next = (next + 1) % e.size();
    }
    void invalidate(std::uint64_t ipa, std::uint64_t size) {
        if (size == 0) return;
        const std::uint64_t last = ipa + (size - 1) < ipa ? ~std::uint64_t{0} : ipa + (size - 1);
        for (auto& x : e)
            if (x.valid && x.ipa_base <= last && ipa <= x.ipa_base + low_mask(x.size_lg2)) x.valid = false;
    }
};
} // namespace

TEST_CASE("walk cache: the indexed lookup finds exactly what a full scan finds", "[nested][cache][property]") {
    rc::prop("random inserts, finds and invalidations of 4K/2M/1G/64K leaves", [] {
        const auto capacity = *rc::gen::inRange<std::size_t>(1, 70);
        nested::walk_cache c(capacity);
        linear_walk_cache ref(capacity);
        RC_ASSERT(c.capacity() == capacity);
        std::uint64_t hits = 0, misses = 0;
        const unsigned sizes[] = {12, 16, 21, 30};
        const auto steps = *rc::gen::inRange(1, 300);
        for (int i = 0; i < steps; ++i) {
            const auto what = *rc::gen::inRange(0, 10);
            // Addresses in a 4 GiB span, so that entries of every size meet.
            const std::uint64_t ipa = *rc::gen::inRange<std::uint64_t>(0, std::uint64_t{1} << 32);
            if (what < 3) {
                const unsigned lg2 = sizes[*rc::gen::inRange(0, 4)];
                nested::walk_cache::entry x;
                x.ipa_base = ipa & ~low_mask(lg2);
                x.pa_base = (std::uint64_t{1} << 40) + x.ipa_base;
                x.size_lg2 = lg2;
                x.level = 3;
                x.perm = prot::read;
                c.insert(x);
                ref.insert(x);
            } else if (what < 9) {
                const auto* got = c.find(ipa);
                const bool want = std::any_of(ref.e.begin(), ref.e.end(), [&](auto& x) { return ref.covers(x, ipa); });
                RC_ASSERT((got != nullptr) == want);
                if (got) {
                    // What it returns is one of the reference's live entries covering ipa.
                    RC_ASSERT(std::any_of(ref.e.begin(), ref.e.end(), [&](auto& x) {
                        return ref.covers(x, ipa) && x.ipa_base == got->ipa_base && x.size_lg2 == got->size_lg2 &&
                               x.pa_base == got->pa_base;
                    }));
                    ++hits;
                } else {
                    ++misses;
                }
            } else {
                const std::uint64_t size = std::uint64_t{1} << *rc::gen::inRange(0, 33);
                c.invalidate(ipa, size);
                ref.invalidate(ipa, size);
            }
            RC_ASSERT(c.hits() == hits);
            RC_ASSERT(c.misses() == misses);
        }
        c.invalidate_all();
        for (std::uint64_t a = 0; a < (std::uint64_t{1} << 32); a += std::uint64_t{1} << 28) RC_ASSERT(c.find(a) == nullptr);
    });
}
