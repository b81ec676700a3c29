// SPDX-License-Identifier: MIT
// Software folding: the shadow table against the nested walk, by example and by property over
// random two-stage operation sequences (both ways of keeping it exact, several format pairs);
// the same sequences check the cached translator against an uncached one.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/formats/arm_v7s.hpp>
#include <iopgtable/formats/vtd_fl.hpp>
#include <iopgtable/formats/vtd_sl.hpp>
#include <iopgtable/mem/default_memory.hpp>
#include <iopgtable/nested/folding.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "nested/nested_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

/// A two-stage world with a folded shadow, a translator with caches and one without.
template <class S1, class S2, class Shadow>
struct fold_world : two_stage<S1, S2> {
    using base = two_stage<S1, S2>;
    using shadow_memory = default_memory_t<Shadow>;
    using folded = nested::folded_table<S1, S2, Shadow, guest_ram, shadow_memory>;

    std::unique_ptr<shadow_memory> shadow_mem = make_default_memory<Shadow>();
    std::optional<folded> fold;
    nested::walk_cache walks;
    nested::translation_cache tlb{256};
    typename base::translator cached = this->make_translator({&walks, &tlb, 3});
    typename base::translator cold = this->make_translator();
    bool mediated;

    /// `mediated`: mode (a), stage-1 changes go through the fold; else mode (b).
    explicit fold_world(bool mediated_changes, typename Shadow::config shadow_cfg = {}) : mediated(mediated_changes) {
        auto f = folded::create(this->s1_cfg, this->root(), *this->s2, shadow_cfg, *shadow_mem,
                                mediated ? &*this->s1 : nullptr);
        REQUIRE(f.ok());
        fold.emplace(std::move(*f));
    }

    // The guest's and the host's operations, with the invalidations the protocol asks for:
    // the guest invalidates every stage-1 change for the shadow (caching mode) but only
    // removals for the IOTLB; the host invalidates stage-2 removals.
    result<void> s1_map(std::uint64_t iova, std::uint64_t ipa, std::uint64_t size, prot p) {
        if (mediated) return fold->s1_map(iova_t{iova}, ipa_t{ipa}, length_t{size}, p);
        auto r = this->s1->map(iova_t{iova}, pa_t{ipa}, length_t{size}, p);
        if (r) REQUIRE(fold->invalidate(iova_t{iova}, length_t{size}).ok());
        return r;
    }
    result<length_t> s1_unmap(std::uint64_t iova, std::uint64_t size) {
        auto r = mediated ? fold->s1_unmap(iova_t{iova}, length_t{size}) : this->s1->unmap(iova_t{iova}, length_t{size});
        if (r && !mediated) REQUIRE(fold->invalidate(iova_t{iova}, length_t{size}).ok());
        if (r) cached.invalidate(iova_t{iova}, length_t{size});
        return r;
    }
    result<void> s2_map(std::uint64_t ipa, std::uint64_t pa, std::uint64_t size, prot p) {
        return fold->s2_map(ipa_t{ipa}, pa_t{pa}, length_t{size}, p);
    }
    result<length_t> s2_unmap(std::uint64_t ipa, std::uint64_t size) {
        auto r = fold->s2_unmap(ipa_t{ipa}, length_t{size});
        if (r) cached.invalidate_stage2(ipa_t{ipa}, length_t{size});
        return r;
    }

    /// The shadow's answer for `iova` and access `a`: the output, or 0 when it refuses.
    std::uint64_t shadow_pa(std::uint64_t iova, nested::access_request a = rd) const {
        auto w = fold->lookup(iova_t{iova});
        if (!w.mapped || !nested::permits(w.perm, a)) return 0;
        return w.oa.value;
    }
    std::uint64_t nested_pa(std::uint64_t iova, nested::access_request a = rd) {
        auto r = cold.translate(iova_t{iova}, a);
        return r.ok() ? r->output.value : 0;
    }
};

using lpae_fold = fold_world<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s1_4k>;

} // namespace

TEST_CASE("folding (a): stage-1 and stage-2 maps land in the shadow with the largest pages both allow", "[nested][fold]") {
    lpae_fold w(true);
    REQUIRE(w.s2_map(0x200000, data_hpa, 0x200000, rw).ok());                 // 2M block
    REQUIRE(w.s2_map(0x400000, data_hpa + 0x400000, 0x200000, rw).ok());
    REQUIRE(w.s2->unmap(ipa_t{0x400000}, length_t{0x200000}).ok());           // behind the fold's back...
    w.fold->invalidate_stage2(ipa_t{0x400000}, length_t{0x200000});          // ... and reported
    REQUIRE(w.s2->map_pages(ipa_t{0x400000}, pa_t{data_hpa + 0x400000}, length_t{0x1000}, 512, rw).ok());
    w.fold->invalidate_stage2(ipa_t{0x400000}, length_t{0x200000});
    REQUIRE(w.s1_map(0x40000000, 0x200000, 0x200000, rw).ok());              // 2M over 2M
    REQUIRE(w.s1_map(0x40200000, 0x400000, 0x200000, prot::read).ok());      // 2M over 4K pages
    REQUIRE(w.s1_map(0x5000, 0x201000, 0x1000, rw).ok());                    // 4K inside a 2M block

    auto big = w.fold->lookup(iova_t{0x40012345});
    REQUIRE(big.mapped);
    CHECK(big.size_lg2 == 21);
    CHECK(big.oa.value == data_hpa + 0x12345);
    auto small = w.fold->lookup(iova_t{0x40212345});
    REQUIRE(small.mapped);
    CHECK(small.size_lg2 == 12);
    CHECK(w.shadow_pa(0x40212345) == data_hpa + 0x412345);
    CHECK(w.shadow_pa(0x40212345, wr) == 0);
    CHECK(w.shadow_pa(0x5008) == data_hpa + 0x1008);
    CHECK(w.fold->stats().dropped == 0);
}

TEST_CASE("folding (a): a stage-2 change updates every shadow entry whose IPA it covers", "[nested][fold]") {
    lpae_fold w(true);
    REQUIRE(w.s1_map(0x10000, 0x300000, 0x2000, rw).ok());
    REQUIRE(w.s1_map(0x800000, 0x301000, 0x1000, prot::read).ok());  // an alias of the second page
    CHECK(w.shadow_pa(0x11000) == 0);                                  // stage 2 maps nothing yet
    REQUIRE(w.s2_map(0x200000, data_hpa, 0x200000, rw).ok());
    CHECK(w.shadow_pa(0x11000) == data_hpa + 0x101000);
    CHECK(w.shadow_pa(0x800000) == data_hpa + 0x101000);
    // Remapping part of the stage-2 block: both aliases follow, the neighbour keeps its translation.
    REQUIRE(w.fold->s2_unmap(ipa_t{0x301000}, length_t{0x1000}, unmap_mode::split).ok());
    CHECK(w.shadow_pa(0x11000) == 0);
    CHECK(w.shadow_pa(0x800000) == 0);
    CHECK(w.shadow_pa(0x10000) == data_hpa + 0x100000);
    REQUIRE(w.s2_map(0x301000, data_hpa + 0x7000, 0x1000, prot::read).ok());
    CHECK(w.shadow_pa(0x11000) == data_hpa + 0x7000);
    CHECK(w.shadow_pa(0x11000, wr) == 0);
    CHECK(w.shadow_pa(0x800000) == data_hpa + 0x7000);
    for (std::uint64_t a : {0x10000ull, 0x11000ull, 0x800000ull}) {
        CHECK(w.shadow_pa(a) == w.nested_pa(a));
        CHECK(w.shadow_pa(a, wr) == w.nested_pa(a, wr));
    }
}

TEST_CASE("folding: unmapping a stage-1 table page in stage 2 empties the shadow behind it", "[nested][fold]") {
    for (bool mediated : {true, false}) {
        lpae_fold w(mediated);
        REQUIRE(w.s2_map(0x200000, data_hpa, 0x200000, rw).ok());
        REQUIRE(w.s1_map(0x1000, 0x200000, 0x1000, rw).ok());
        REQUIRE(w.s1_map(0x40000000, 0x201000, 0x1000, rw).ok());
        const std::uint64_t table = w.s1->lookup(iova_t{0x1000}).entry_address.value & ~std::uint64_t{0xfff};
        REQUIRE(w.shadow_pa(0x1000) == data_hpa);
        REQUIRE(w.s2_unmap(table, 0x1000).ok());
        CHECK(w.nested_pa(0x1000) == 0);
        CHECK(w.shadow_pa(0x1000) == 0);
        CHECK(w.shadow_pa(0x40000000) == data_hpa + 0x1000);  // other tables: still there
        CHECK(w.fold->stats().full_resyncs == 2);             // creation, and this
        REQUIRE(w.s2_map(table, window_hpa + (table - window_ipa), 0x1000, rw).ok());
        CHECK(w.shadow_pa(0x1000) == data_hpa);
    }
}

TEST_CASE("folding: a stage-2 change to any page of a stage-1 table that was read re-syncs", "[nested][fold]") {
    // 16K stage-1 tables over 4K stage-2 pages: a table spans four stage-2 pages, and the fold
    // read only the first (entry 0). The host replaces the second page with one holding a
    // valid leaf for entry 512 (IOVA 8M): the nested walk now translates 8M, so must the shadow.
    fold_world<arm_lpae_s1_16k, arm_lpae_s2_4k, arm_lpae_s1_4k> w(true);
    REQUIRE(w.s2_map(0x200000, data_hpa, 0x200000, rw).ok());
    REQUIRE(w.s1_map(0x0, 0x200000, 0x4000, rw).ok());
    const std::uint64_t table = w.s1->lookup(iova_t{0}).entry_address.value;
    REQUIRE((table & 0x3fff) == 0);
    const std::uint64_t leaf = arm_lpae_s1_16k::make_leaf(w.s1_cfg, 0, 14, 0x204000, rw);
    REQUIRE(w.host.write(pa_t{spare_hpa}, &leaf, sizeof leaf));
    REQUIRE(w.s2_unmap(table + 0x1000, 0x1000).ok());
    REQUIRE(w.s2_map(table + 0x1000, spare_hpa, 0x1000, prot::read).ok());
    CHECK(w.nested_pa(0x800000) == data_hpa + 0x4000);
    CHECK(w.shadow_pa(0x800000) == data_hpa + 0x4000);
    CHECK(w.shadow_pa(0x0) == data_hpa);
}

TEST_CASE("folding (b): the guest's own writes reach the shadow at its invalidation", "[nested][fold]") {
    lpae_fold w(false);
    REQUIRE(w.s2_map(0x200000, data_hpa, 0x400000, rw).ok());
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x200000}, length_t{0x3000}, rw).ok());
    CHECK(w.shadow_pa(0x2000) == 0);  // not yet told
    REQUIRE(w.fold->invalidate(iova_t{0x2000}, length_t{0x1000}).ok());
    CHECK(w.shadow_pa(0x2000) == data_hpa + 0x1000);
    CHECK(w.shadow_pa(0x1000) == 0);  // outside the invalidated range
    REQUIRE(w.fold->invalidate(iova_t{0}, length_t{0x10000}).ok());
    CHECK(w.shadow_pa(0x1000) == data_hpa);
    REQUIRE(w.s1->unmap(iova_t{0x1000}, length_t{0x3000}).ok());
    REQUIRE(w.s1->map(iova_t{0x1000}, pa_t{0x3ff000}, length_t{0x1000}, prot::read).ok());
    CHECK(w.shadow_pa(0x1000, wr) == data_hpa);  // stale until invalidated
    w.fold->invalidate_all();
    CHECK(w.shadow_pa(0x1000, wr) == 0);
    CHECK(w.shadow_pa(0x1000) == data_hpa + 0x1ff000);
    CHECK(w.shadow_pa(0x2000) == 0);
    CHECK(w.fold->invalidate(iova_t{std::uint64_t{1} << 48}, length_t{0x1000}).error() == errc::range);
    CHECK(w.fold->invalidate(iova_t{0}, length_t{0}).error() == errc::invalid);
    CHECK(w.fold->s1_map(iova_t{0}, ipa_t{0}, length_t{0x1000}, rw).error() == errc::unsupported);
}

TEST_CASE("folding: permissions the shadow format cannot say are dropped, never widened", "[nested][fold]") {
    SECTION("write-only in an LPAE stage-1 shadow (its leaves are always readable)") {
        lpae_fold w(true);
        REQUIRE(w.s2_map(0x200000, data_hpa, 0x1000, prot::write).ok());
        REQUIRE(w.s1_map(0x1000, 0x200000, 0x1000, rw).ok());
        CHECK(w.nested_pa(0x1000, wr) == data_hpa);
        CHECK(w.nested_pa(0x1000, rd) == 0);
        CHECK_FALSE(w.fold->lookup(iova_t{0x1000}).mapped);
        CHECK(w.fold->stats().dropped == 1);
    }
    SECTION("an LPAE stage-2 shadow can say it") {
        fold_world<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s2_4k> w(true);
        REQUIRE(w.s2_map(0x200000, data_hpa, 0x1000, prot::write).ok());
        REQUIRE(w.s1_map(0x1000, 0x200000, 0x1000, rw).ok());
        CHECK(w.shadow_pa(0x1000, wr) == data_hpa);
        CHECK(w.shadow_pa(0x1000, rd) == 0);
    }
    SECTION("privileged-only in a VT-d shadow is dropped; exec is not compared there") {
        fold_world<arm_lpae_s1_4k, arm_lpae_s2_4k, vtd_sl> w(true);
        REQUIRE(w.s2_map(0x200000, data_hpa, 0x2000, rw).ok());
        REQUIRE(w.s1_map(0x1000, 0x200000, 0x1000, rw | prot::priv).ok());
        REQUIRE(w.s1_map(0x2000, 0x201000, 0x1000, rw | prot::noexec).ok());
        CHECK_FALSE(w.fold->lookup(iova_t{0x1000}).mapped);
        CHECK(w.shadow_pa(0x2000, wr) == data_hpa + 0x1000);
    }
}

TEST_CASE("folding into a shadow whose format is chosen at run time", "[nested][fold]") {
    two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k> w;
    using folded = nested::basic_folded_table<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram, nested::any_shadow>;
    auto store = nested::any_shadow::create<arm_v7s>(v7s_config{}, make_default_memory<arm_v7s>());
    REQUIRE(store.ok());
    CHECK(std::string(store->format_name()) == "arm-v7s");
    lpae_config c1;
    c1.ias = 32;
    w.s1_cfg = c1;
    auto t = two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k>::s1_table::create(c1, *w.gmem);
    REQUIRE(t.ok());
    auto f = folded::create(c1, ipa_t{t->root().value}, *w.s2, std::move(*store), &*t);
    REQUIRE(f.ok());
    REQUIRE(f->s2_map(ipa_t{0x200000}, pa_t{0x80000000}, length_t{0x200000}, rw).ok());
    REQUIRE(f->s1_map(iova_t{0x200000}, ipa_t{0x200000}, length_t{0x200000}, rw).ok());
    auto l = f->lookup(iova_t{0x2abcde});
    REQUIRE(l.mapped);
    CHECK(l.oa.value == 0x800abcde);
    CHECK(l.size_lg2 == 20);  // 2M over 2M, as v7s sections (its largest size below 2M)
}

TEST_CASE("folding: shadows that cannot hold the stages are refused", "[nested][fold]") {
    two_stage<arm_lpae_s1_4k, arm_lpae_s2_4k> w;
    host_heap heap;
    using big_page = nested::folded_table<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s1_64k, guest_ram, host_heap>;
    CHECK(big_page::create(lpae_config{}, w.root(), *w.s2, lpae_config{}, heap).error() == errc::invalid);
    lpae_config narrow;
    narrow.ias = 40;
    using same = nested::folded_table<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s1_4k, guest_ram, host_heap>;
    CHECK(same::create(lpae_config{}, w.root(), *w.s2, narrow, heap).error() == errc::invalid);
    CHECK(same::create(lpae_config{}, w.root(), *w.s2, lpae_config{}, heap).ok());
}

// ---------------------------------------------------------------------------- property

namespace {

/// Random two-stage operations; after each one (a sync point) the shadow must agree with the
/// nested walk, and the cached translator with the uncached one, at every mapping edge, at
/// random addresses, and at sampled shadow leaves (every leaf after the last operation).
using op_words = std::array<std::uint32_t, 5>;

/// Fills the spare host pages with random stage-1 entries (hostile table contents), except
/// that no entry, read as a table at any level, points into the window: stage-1 tables must
/// form a tree (see folding.hpp), and garbage must not point back into live tables.
template <class S1>
void fill_garbage(guest_ram& host, const typename S1::config& cfg, std::uint64_t bytes, std::uint64_t seed) {
    using word = typename S1::word;
    std::mt19937_64 random(seed);
    std::vector<word> words(bytes / sizeof(word));
    for (auto& w : words) {
        w = static_cast<word>(random());
        for (unsigned level = 1; level < S1::max_levels; ++level) {
            const std::uint64_t t = S1::table_address(cfg, level, w);
            if (S1::classify(cfg, level, w) == entry_kind::table && t >= window_ipa && t < window_ipa + window_size) w = 0;
        }
    }
    REQUIRE(host.write(pa_t{spare_hpa}, words.data(), bytes));
}

template <class S1, class S2, class Shadow>
void run_ops(bool mediated, std::uint64_t data_base, const std::vector<op_words>& ops,
             const std::vector<std::uint64_t>& samples, std::uint64_t garbage_seed) {
    fold_world<S1, S2, Shadow> w(mediated);
    constexpr std::uint64_t table_pages = 6;  // window pages the operations take away and replace
    fill_garbage<S1>(w.host, w.s1_cfg, table_pages * w.s2->min_page(), garbage_seed);
    const std::uint64_t unit = std::max({w.s1->min_page(), w.s2->min_page(), w.fold->shadow().table().min_page()});
    const std::uint64_t page2 = w.s2->min_page();
    constexpr std::uint64_t block = 0x200000;
    const std::uint64_t iova_end = std::uint64_t{1} << std::min(w.s1->geo().ias, 25u);
    std::vector<std::uint64_t> edges;

    const nested::access_request accesses[] = {rd, wr, {nested::access_kind::read, true}, {nested::access_kind::write, true}};
    auto same_fault = [](const nested::fault& a, const nested::fault& b) {
        return a.stage == b.stage && a.level == b.level && a.address == b.address && a.reason == b.reason &&
               a.table_fetch == b.table_fetch && a.table_level == b.table_level && a.access == b.access;
    };
    auto check_point = [&](std::uint64_t iova) {
        if ((iova >> w.s1->geo().ias) != 0) return;
        // The DMA path's walk, uncached and through the walk cache, passes an access exactly
        // when the full walk does, to the same output with the same flags and size.
        const nested::leaf_walk leaf[] = {w.cold.translate_leaf(iova_t{iova}), w.cached.translate_leaf(iova_t{iova})};
        for (const auto a : accesses) {
            const auto n = w.cold.translate(iova_t{iova}, a);
            for (const auto& l : leaf) {
                RC_ASSERT((l.mapped() && nested::permits(l.rights, a)) == n.ok());
                if (n.ok()) {
                    RC_ASSERT(l.output == n->output.value);
                    RC_ASSERT(l.perm == n->perm);
                    RC_ASSERT(l.size_lg2 == n->size_lg2);
                }
            }
            const auto s = w.fold->lookup(iova_t{iova});
            const bool shadow_ok = s.mapped && nested::permits(s.perm, a);
            RC_ASSERT(shadow_ok == n.ok());
            if (n.ok()) RC_ASSERT(s.oa.value == n->output.value);
            const auto c = w.cached.translate(iova_t{iova}, a);
            RC_ASSERT(c.ok() == n.ok());
            if (n.ok()) {
                RC_ASSERT(c->output.value == n->output.value);
                RC_ASSERT(c->perm == n->perm);
            } else {
                RC_ASSERT(same_fault(c.error(), n.error()));
            }
        }
    };
    auto check_all = [&](bool every_leaf) {
        for (auto e : edges) check_point(e);
        for (auto r : samples) check_point(r % iova_end);
        std::vector<std::uint64_t> leaves;
        auto v = w.fold->shadow().table().visit_all([&](const leaf_entry<Shadow>& e) {
            leaves.push_back(e.iova);
            leaves.push_back(e.iova + low_mask(Shadow::item_lg2(e.level)));
            return true;
        });
        RC_ASSERT(v.ok());
        const std::size_t stride = every_leaf ? 1 : std::max<std::size_t>(1, leaves.size() / 32);
        for (std::size_t i = 0; i < leaves.size(); i += stride) {
            // A shadow entry must be one the nested walk agrees with (for some access it allows).
            const auto s = w.fold->lookup(iova_t{leaves[i]});
            RC_ASSERT(s.mapped);
            bool any = false;
            for (const auto a : accesses) {
                if (!nested::permits(s.perm, a)) continue;
                any = true;
                const auto n = w.cold.translate(iova_t{leaves[i]}, a);
                RC_ASSERT(n.ok());
                RC_ASSERT(n->output.value == s.oa.value);
            }
            RC_ASSERT(any);
        }
    };

    for (const auto& v : ops) {
        const bool big = (v[4] & 3) == 0;
        // Few distinct addresses, so that mappings of both stages meet (and collide) often.
        const std::uint64_t a = big ? (v[1] % 4) * block : (v[1] % 128) * unit;
        const std::uint64_t b = big ? (v[2] % 4) * block : (v[2] % 128) * unit;
        const std::uint64_t size = big ? block : (1 + v[3] % 4) * unit;
        const prot p = (v[4] >> 2) & 1 ? prot::read : rw;
        switch (v[0] % 12) {
        case 0: case 1: case 2: case 3:
            if (w.s1_map(a, b, size, p)) edges.insert(edges.end(), {a, a + size - 1, a + size});
            break;
        case 4: case 5:
            (void)w.s1_unmap(a, size);
            break;
        case 6: case 7:
            (void)w.s2_map(b, data_base + a, size, p);
            break;
        case 8: case 9:
            (void)w.s2_unmap(b, size);
            break;
        case 10:  // the host takes away a page of the guest's stage-1 tables (allocated from the bottom)
            (void)w.s2_unmap(window_ipa + (v[1] % table_pages) * page2, page2);
            break;
        case 11: {  // ... and gives it back, or puts a read-only page of garbage in its place
            const std::uint64_t off = (v[1] % table_pages) * page2;
            if (v[2] & 1) (void)w.s2_map(window_ipa + off, window_hpa + off, page2, rw);
            else (void)w.s2_map(window_ipa + off, spare_hpa + off, page2, prot::read);
            break;
        }
        }
        check_all(false);
    }
    check_all(true);
}

/// One property run: random operations and sample addresses.
template <class S1, class S2, class Shadow>
void run_sequence(bool mediated, std::uint64_t data_base) {
    // Full-size values from the first test on (rapidcheck otherwise starts with tiny ones).
    const auto count = *rc::gen::resize(100, rc::gen::inRange(1, 24));
    const auto ops = *rc::gen::resize(100, rc::gen::container<std::vector<op_words>>(
                                               static_cast<std::size_t>(count), rc::gen::arbitrary<op_words>()));
    const auto samples = *rc::gen::container<std::vector<std::uint64_t>>(8, rc::gen::arbitrary<std::uint64_t>());
    const auto seed = *rc::gen::noShrink(rc::gen::arbitrary<std::uint64_t>());
    run_ops<S1, S2, Shadow>(mediated, data_base, ops, samples, seed);
}

} // namespace

TEST_CASE("property: the shadow equals the nested walk after every sync point", "[nested][fold][property]") {
    rc::prop("LPAE 4K over LPAE 4K, shadow LPAE, mediated", [] {
        run_sequence<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s1_4k>(true, data_hpa);
    });
    rc::prop("LPAE 4K over LPAE 4K, shadow LPAE, guest writes and invalidates", [] {
        run_sequence<arm_lpae_s1_4k, arm_lpae_s2_4k, arm_lpae_s1_4k>(false, data_hpa);
    });
    rc::prop("VT-d first over second stage, shadow VT-d first stage, mediated", [] {
        run_sequence<vtd_fl, vtd_sl, vtd_fl>(true, data_hpa);
    });
    rc::prop("VT-d first over second stage, shadow VT-d second stage, guest writes", [] {
        run_sequence<vtd_fl, vtd_sl, vtd_sl>(false, data_hpa);
    });
    rc::prop("v7s over LPAE 4K, shadow v7s, mediated", [] {
        run_sequence<arm_v7s, arm_lpae_s2_4k, arm_v7s>(true, 0x80000000);
    });
    rc::prop("LPAE 16K over LPAE 4K, shadow LPAE stage 2, guest writes", [] {
        run_sequence<arm_lpae_s1_16k, arm_lpae_s2_4k, arm_lpae_s2_4k>(false, data_hpa);
    });
    rc::prop("LPAE 4K over LPAE 64K, shadow VT-d second stage, mediated", [] {
        run_sequence<arm_lpae_s1_4k, arm_lpae_s2_64k, vtd_sl>(true, data_hpa);
    });
}

