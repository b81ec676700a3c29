// SPDX-License-Identifier: MIT
// Conformance suite: replace (virtio-iommu's relaxed MAP) on every sample configuration of
// every format. Over an empty range it is map; over older mappings it splits what straddles the
// ends, removes what is inside and maps the range; an exact match writes nothing and calls no
// hook; when table memory runs out (in the split or in the map) every translation stays as it
// was.
#include <algorithm>
#include <vector>

#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/recording_memory.hpp"
#include "support/reference_model.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

constexpr prot rw = prot::read | prot::write;

/// Table memory M that gives at most `left` more tables, then errc::nomem.
template <table_memory M>
class budget_memory : public test::detail::software_walk_of<M> {
public:
    explicit budget_memory(M& inner) noexcept : inner_(inner) {}
    std::uint64_t left = ~std::uint64_t{0};

    result<pa_t> allocate_table(std::uint64_t bytes) {
        if (left == 0) return failure(errc::nomem);
        --left;
        return inner_.allocate_table(bytes);
    }
    void free_table(pa_t pa, std::uint64_t bytes) noexcept { inner_.free_table(pa, bytes); }
    template <class W>
    W* entry(pa_t pa) noexcept {
        return inner_.template entry<W>(pa);
    }
    std::uint64_t bytes_in_use() const noexcept { return inner_.bytes_in_use(); }

private:
    M& inner_;
};

/// A table's translation as maximal runs (input start, input last, output start, permissions),
/// whatever the leaf sizes: two tables that translate every address alike give equal runs.
struct run {
    std::uint64_t iova, last, oa;
    prot perm;
    friend bool operator==(const run&, const run&) = default;
};
template <class PT>
std::vector<run> translation_runs(const PT& pt) {
    using F = typename PT::format;
    std::vector<run> out;
    for (const auto& e : dump(pt)) {
        const auto raw = static_cast<typename F::word>(e.raw);
        const std::uint64_t slot_last = e.iova + ((std::uint64_t{1} << F::item_lg2(e.level)) - 1);
        const std::uint64_t oa = F::leaf_address(pt.cfg(), e.level, raw) + (e.iova & ((std::uint64_t{1} << e.size_lg2) - 1));
        const prot perm = F::leaf_prot(pt.cfg(), e.level, raw);
        if (!out.empty() && out.back().last + 1 == e.iova && out.back().oa + (e.iova - out.back().iova) == oa &&
            out.back().perm == perm) {
            out.back().last = slot_last;
        } else {
            out.push_back({e.iova, slot_last, oa, perm});
        }
    }
    return out;
}

/// Replace on `pt` and on `model`: the same outcome, the same table afterwards.
template <class PT>
void replace_both(PT& pt, reference_model& model, std::uint64_t iova, std::uint64_t pa, std::uint64_t size, prot p) {
    using F = typename PT::format;
    INFO("replace 0x" << std::hex << iova << " -> 0x" << pa << " size 0x" << size);
    const auto got = pt.replace(in_addr<F>(iova), pa_t{pa}, length_t{size}, p);
    const auto want = model.replace<F>(pt.cfg(), iova, pa, size, p);
    REQUIRE(got.ok() == want.ok());
    if (!got.ok()) {
        CHECK(got.error() == want.error());
        return;
    }
    CHECK(got->removed == want->removed);
    CHECK(got->changed == want->changed);
    CHECK(translation_mismatch(pt, iova, pa, size) == "");
    CHECK(dump_difference(dump(pt), model.expected_dump<F>(pt.cfg())) == "");
}

} // namespace

TEMPLATE_LIST_TEST_CASE("replace over an empty range is map", "[replace]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        auto twin = make_table<F>(s.cfg, *mem);
        // Every page size once, and a range of mixed sizes: the leaves map would write.
        for (std::uint64_t sz : page_sizes_upto(s.geo, big)) {
            const auto r = pt.replace(in_addr<F>(big + sz), pa_t{2 * sz}, length_t{sz}, rw);
            REQUIRE(r.ok());
            CHECK(r->changed);
            CHECK(r->removed == 0);
            REQUIRE(twin.map(in_addr<F>(big + sz), pa_t{2 * sz}, length_t{sz}, rw).ok());
            CHECK(dump_difference(dump(pt), dump(twin)) == "");
            REQUIRE(pt.unmap(in_addr<F>(big + sz), length_t{sz})->value == sz);
            REQUIRE(twin.unmap(in_addr<F>(big + sz), length_t{sz})->value == sz);
        }
        const std::uint64_t len = big + 3 * small;
        REQUIRE(pt.replace(in_addr<F>(2 * big - small), pa_t{big - small}, length_t{len}, prot::read)->changed);
        REQUIRE(twin.map(in_addr<F>(2 * big - small), pa_t{big - small}, length_t{len}, prot::read).ok());
        CHECK(dump_difference(dump(pt), dump(twin)) == "");
        CHECK(translation_mismatch(pt, 2 * big - small, big - small, len) == "");
    }
}

TEMPLATE_LIST_TEST_CASE("replace splits what straddles the range, removes what is inside and maps the range",
                        "[replace]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const auto sizes = sizes_to_check(s.geo, largest_page(s.geo));
        const std::uint64_t small = sizes.front(), big = sizes.back();
        REQUIRE(ias_end(s.geo) / 4 >= big);
        REQUIRE(oas_end(s.geo) / 4 >= big);
        // The old mapping: one leaf of every size above the smallest (a block that must be
        // split: LPAE's 2M/1G, v7s' sections and large pages, VT-d's superpages), and a run of
        // smallest pages; the new ranges cut it at either end, both, or lie inside it.
        std::vector<std::uint64_t> olds(sizes.begin() + 1, sizes.end());
        olds.push_back(4 * small);
        for (const std::uint64_t old : olds) {
            const std::uint64_t at = 2 * big, old_pa = big;  // old: [at, at + old) -> [old_pa, ...)
            struct cut {
                std::uint64_t iova, size;
            };
            const std::vector<cut> cuts = {
                {at - small, 2 * small},              // starts before, ends inside
                {at + old - small, 2 * small},        // starts inside, ends after
                {at + small, old - 2 * small},        // inside, cutting both ends
                {at + small, small},                  // one page inside
                {at - small, old + 2 * small},        // covers all of it and more
                {at, old},                            // exactly the old range
            };
            for (const cut& c : cuts) {
                if (c.size == 0) continue;
                INFO("old 0x" << std::hex << old << " at 0x" << at << ", new [0x" << c.iova << ", +0x" << c.size << ")");
                auto mem = make_test_memory<F>();
                event_log log;
                auto pt = make_table<F>(s.cfg, *mem, log.hooks());
                reference_model model(s.geo);
                REQUIRE(pt.map(in_addr<F>(at), pa_t{old_pa}, length_t{old}, rw).ok());
                REQUIRE(model.map(at, old_pa, old, rw).ok());
                // A neighbour on each side that the replace must not touch.
                REQUIRE(pt.map(in_addr<F>(at - 2 * small), pa_t{0}, length_t{small}, prot::read).ok());
                REQUIRE(model.map(at - 2 * small, 0, small, prot::read).ok());
                REQUIRE(pt.map(in_addr<F>(at + old + small), pa_t{0}, length_t{small}, prot::read).ok());
                REQUIRE(model.map(at + old + small, 0, small, prot::read).ok());

                const std::uint64_t new_pa = c.iova;  // another output (the old one is at - big), as aligned
                const auto r = pt.replace(in_addr<F>(c.iova), pa_t{new_pa}, length_t{c.size}, prot::write);
                REQUIRE(r.ok());
                CHECK(r->changed);
                const std::uint64_t inside = std::min(c.iova + c.size, at + old) - std::max(c.iova, at);
                CHECK(r->removed == inside);
                const auto want = model.replace<F>(pt.cfg(), c.iova, new_pa, c.size, prot::write);
                REQUIRE(want.ok());
                CHECK(r->removed == want->removed);
                CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
                // The new range, the old mapping's parts outside it, the neighbours.
                CHECK(translation_mismatch(pt, c.iova, new_pa, c.size) == "");
                if (c.iova > at) CHECK(translation_mismatch(pt, at, old_pa, c.iova - at) == "");
                if (c.iova + c.size < at + old)
                    CHECK(translation_mismatch(pt, c.iova + c.size, old_pa + (c.iova + c.size - at),
                                               at + old - (c.iova + c.size)) == "");
                CHECK(translation_mismatch(pt, at - 2 * small, 0, small) == "");
                CHECK(translation_mismatch(pt, at + old + small, 0, small) == "");
                // What went is reported: leaf_removed ranges cover every removed byte.
                std::uint64_t reported = 0;
                for (const auto& e : log.events)
                    if (e.kind == event_kind::leaf_removed) {
                        CHECK(e.a >= c.iova);
                        CHECK(e.a + e.b <= c.iova + c.size);
                        reported += e.b;
                    }
                CHECK(reported == inside);
            }
        }
    }
}

TEMPLATE_LIST_TEST_CASE("replace that matches what is mapped writes nothing and calls no hook", "[replace]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const auto sizes = page_sizes_upto(s.geo, largest_page(s.geo));
        const std::uint64_t small = sizes.front(), big = sizes.back();
        auto base = make_test_memory<F>();
        event_log log;
        recording_memory<test_memory<F>> mem(*base, log);
        auto pt = make_table<F>(s.cfg, mem, log.hooks());
        reference_model model(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        const std::uint64_t at = 2 * big, len = big + 4 * small, pa = 2 * big;
        REQUIRE(pt.map(in_addr<F>(at - 2 * small), pa_t{pa - 2 * small}, length_t{len}, rw).ok());
        REQUIRE(model.map(at - 2 * small, pa - 2 * small, len, rw).ok());
        const auto before = dump(pt);
        const std::size_t events = log.events.size();
        struct same {
            std::uint64_t iova, size;
        };
        // The whole mapping, a part of one large leaf (straddling both ends), a part across
        // leaves of different sizes.
        for (const same& c : {same{at - 2 * small, len}, same{at + small, small}, same{at - small, 2 * small},
                              same{at + big - small, 3 * small}}) {
            INFO("same [0x" << std::hex << c.iova << ", +0x" << c.size << ")");
            const auto r = pt.replace(in_addr<F>(c.iova), pa_t{c.iova - at + pa}, length_t{c.size}, rw);
            REQUIRE(r.ok());
            CHECK(!r->changed);
            CHECK(r->removed == 0);
            CHECK(dump_difference(dump(pt), before) == "");
            CHECK(log.events.size() == events);  // no hook, no table allocated or freed
        }
        // Permissions that encode to the same leaf count as the same (prot::none + extra flags
        // the format drops would too); another output or other permissions do not.
        const auto other_pa = pt.replace(in_addr<F>(at), pa_t{pa + small}, length_t{small}, rw);
        REQUIRE(other_pa.ok());
        CHECK(other_pa->changed);
        CHECK(other_pa->removed == small);
        CHECK(translation_mismatch(pt, at, pa + small, small) == "");
        REQUIRE(model.replace<F>(pt.cfg(), at, pa + small, small, rw).ok());

        // Permissions that decode otherwise (some configurations cannot tell read from read+write).
        auto decoded = [&](prot q) { return F::leaf_prot(s.cfg, 0, F::make_leaf(s.cfg, 0, lg2_of(small), pa, q)); };
        prot other = rw;
        for (prot q : valid_prots())
            if (F::check_prot(s.cfg, q).ok() && decoded(q) != decoded(rw)) other = q;
        REQUIRE(other != rw);
        const auto other_prot = pt.replace(in_addr<F>(at + small), pa_t{pa + small}, length_t{small}, other);
        REQUIRE(other_prot.ok());
        CHECK(other_prot->changed);
        CHECK(other_prot->removed == small);
        CHECK(pt.lookup(in_addr<F>(at + small)).perm == decoded(other));
        REQUIRE(model.replace<F>(pt.cfg(), at + small, pa + small, small, other).ok());
        CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");

        // The same again: now an exact match.
        const std::size_t events2 = log.events.size();
        const auto again = pt.replace(in_addr<F>(at + small), pa_t{pa + small}, length_t{small}, other);
        REQUIRE(again.ok());
        CHECK(!again->changed);
        CHECK(log.events.size() == events2);
        // A range with a hole is no match: the hole gets mapped.
        REQUIRE(pt.unmap(in_addr<F>(at + 2 * small), length_t{small}, unmap_mode::split).ok());
        REQUIRE(model.unmap(at + 2 * small, small, true).ok());
        const auto hole = pt.replace(in_addr<F>(at + 2 * small), pa_t{pa + 2 * small}, length_t{2 * small}, rw);
        const auto hole_want = model.replace<F>(pt.cfg(), at + 2 * small, pa + 2 * small, 2 * small, rw);
        REQUIRE(hole.ok());
        REQUIRE(hole_want.ok());
        CHECK(hole->changed);
        CHECK(hole_want->changed);
        CHECK(hole->removed == hole_want->removed);
        CHECK(hole->removed == (big > small ? small : 0));  // the page after the hole, when mapped
        CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
    }
}

TEMPLATE_LIST_TEST_CASE("replace refuses what map refuses, with the same error, and changes nothing", "[replace]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        REQUIRE(pt.map(in_addr<F>(big), pa_t{big}, length_t{big}, rw).ok());
        const auto before = dump(pt);
        struct bad {
            std::uint64_t iova, pa, size;
            prot p;
        };
        std::vector<bad> cases = {
            {big, 0, 0, rw},                              // size 0
            {big + small / 2, 0, small, rw},              // misaligned iova
            {big, small / 2, small, rw},                  // misaligned pa
            {big, 0, small + small / 2, rw},              // misaligned size
            {big, 0, small, prot::none},                  // no READ/WRITE
            {big, oas_end(s.geo) - small, 2 * small, rw}, // beyond OAS
            {~std::uint64_t{0} - small + 1, 0, 2 * small, rw},  // wraps
        };
        if (s.geo.ias < 64) cases.push_back({ias_end(s.geo) - small, 0, 2 * small, rw});  // beyond IAS
        for (prot p : valid_prots())
            if (!F::check_prot(s.cfg, p)) cases.push_back({big, 0, small, p});  // not expressible
        for (const bad& c : cases) {
            INFO("iova 0x" << std::hex << c.iova << " pa 0x" << c.pa << " size 0x" << c.size << " prot 0x" << to_bits(c.p));
            const auto r = pt.replace(in_addr<F>(c.iova), pa_t{c.pa}, length_t{c.size}, c.p);
            const auto m = pt.map(in_addr<F>(c.iova), pa_t{c.pa}, length_t{c.size}, c.p);
            REQUIRE(!r.ok());
            REQUIRE(!m.ok());
            CHECK(r.error() == m.error());
            CHECK(dump_difference(dump(pt), before) == "");
        }
    }
}

TEMPLATE_LIST_TEST_CASE("out of table memory, replace fails with nomem and every translation stays",
                        "[replace][nomem]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        if (s.geo.levels < 2) continue;  // a single-level table never allocates
        // The old mapping: the smallest block above level 0 (LPAE 4K: 2M; v7s: a section).
        const std::uint64_t small = smallest_page(s.geo);
        std::uint64_t blk = 0;
        for (std::uint64_t sz : page_sizes(s.geo))
            if (blk == 0 && leaf_level<F>(s.geo, lg2_of(sz)).value_or(0) > 0) blk = sz;
        if (blk == 0) continue;  // no block: nothing to split, and pages need no table
        REQUIRE(ias_end(s.geo) / 4 >= blk);
        REQUIRE(oas_end(s.geo) / 4 >= blk);
        const std::uint64_t at = 2 * blk;
        // (a) The old block is replaced by smallest pages at an output only they can map: no
        //     split, the map needs tables. (b) The new range cuts the block's end and runs into
        //     the empty slot after it: the split needs tables, and so does the map.
        struct attempt {
            const char* what;
            std::uint64_t iova, size;
            bool splits;
        };
        for (const attempt& a : {attempt{"whole block, small pages", at, blk, false},
                                 attempt{"cut the end, run on", at + blk - small, 2 * small, true}}) {
            INFO(a.what);
            int nomem = 0, restored = 0;
            bool done = false;
            for (std::uint64_t budget = 0; !done && budget < 64; ++budget) {
                auto inner = make_test_memory<F>();
                budget_memory<test_memory<F>> mem(*inner);
                event_log log;
                auto pt = make_table<F>(s.cfg, mem, log.hooks());
                REQUIRE(pt.map(in_addr<F>(at), pa_t{blk}, length_t{blk}, rw).ok());
                REQUIRE(pt.map(in_addr<F>(at - small), pa_t{0}, length_t{small}, prot::read).ok());
                const auto before = dump(pt);
                const auto runs = translation_runs(pt);
                const std::uint64_t in_use = inner->bytes_in_use();
                mem.left = budget;
                const std::uint64_t new_pa = 3 * blk + small;  // only smallest pages can map it
                const auto r = pt.replace(in_addr<F>(a.iova), pa_t{new_pa}, length_t{a.size}, prot::write);
                if (r.ok()) {
                    done = true;
                    CHECK(r->changed);
                    CHECK(translation_mismatch(pt, a.iova, new_pa, a.size) == "");
                    break;
                }
                INFO("budget " << budget);
                CHECK(r.error() == errc::nomem);
                ++nomem;
                const bool cleared = log.count(event_kind::leaf_removed) > 0;  // the restore ran
                restored += cleared;
                CHECK(translation_runs(pt) == runs);
                CHECK(translation_mismatch(pt, at, blk, blk) == "");
                CHECK(!pt.iova_to_phys(in_addr<F>(at + blk)));
                if (!a.splits) {  // nothing was split: the very same entries, no table kept
                    CHECK(dump_difference(dump(pt), before) == "");
                    CHECK(inner->bytes_in_use() == in_use);
                }
            }
            CHECK(done);
            CHECK(nomem >= 1);
            // At least one attempt cleared the old leaves, then failed in the map and put them back.
            CHECK(restored >= 1);
        }
    }
}
