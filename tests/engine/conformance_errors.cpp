// SPDX-License-Identifier: MIT
// Conformance suite, part 2: refused operations change nothing; unmap skips holes, refuses to
// cut a leaf, and splits leaves when asked.
#include <string>
#include <vector>

#include "support/checks.hpp"
#include "support/format_list.hpp"
#include "support/reference_model.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

/// What a table looks like from outside: its leaves and the memory it holds.
template <class PT>
struct snapshot {
    std::vector<dump_entry> leaves;
    std::uint64_t table_bytes;
    std::uint64_t mem_bytes;
    explicit snapshot(const PT& pt) : leaves(dump(pt)), table_bytes(pt.table_bytes()), mem_bytes(pt.mem().bytes_in_use()) {}
};

template <class PT>
void check_unchanged(const PT& pt, const snapshot<PT>& before) {
    CHECK(dump_difference(dump(pt), before.leaves) == "");
    CHECK(pt.table_bytes() == before.table_bytes);
    CHECK(pt.mem().bytes_in_use() == before.mem_bytes);
}

struct bad_map {
    const char* what;
    std::uint64_t iova, pa, size;
    prot perm;
    errc expect;
};

struct bad_unmap {
    const char* what;
    std::uint64_t iova, size;
    errc expect;
};

} // namespace

TEMPLATE_LIST_TEST_CASE("map refuses bad arguments and anything mapped, changing nothing", "[conformance][errors]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        const std::uint64_t end = ias_end(s.geo), oend = oas_end(s.geo), top = ~std::uint64_t{0};
        REQUIRE(end / 4 >= big);
        REQUIRE(oend / 4 >= big);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        // One smallest page deep in the region [big, 2 big), one largest page at 2 big.
        const std::uint64_t deep = big + ((big / 2) & ~(small - 1));
        REQUIRE(pt.map(in_addr<F>(deep), pa_t{small}, length_t{small}, prot::read | prot::write).ok());
        REQUIRE(pt.map(in_addr<F>(2 * big), pa_t{0}, length_t{big}, prot::read).ok());
        const snapshot before(pt);
        const std::uint64_t free_va = 3 * big;
        const prot rw = prot::read | prot::write;

        std::vector<bad_map> cases = {
            {"size 0", free_va, 0, 0, rw, errc::invalid},
            {"size not a multiple of the smallest page", free_va, 0, small + small / 2, rw, errc::invalid},
            {"size below the smallest page", free_va, 0, small / 2, rw, errc::invalid},
            {"iova misaligned", free_va + small / 2, 0, small, rw, errc::invalid},
            {"pa misaligned", free_va, small / 2, small, rw, errc::invalid},
            {"prot none", free_va, 0, small, prot::none, errc::invalid},
            {"prot without read or write", free_va, 0, small, prot::cache | prot::noexec | prot::mmio | prot::priv,
             errc::invalid},
            {"unknown prot bit", free_va, 0, small, prot::read | prot_from_bits(0x40), errc::invalid},
            {"range wrapping the 64-bit space", top - small + 1, 0, 2 * small, rw, errc::range},
            {"pa range wrapping", free_va, top - small + 1, 2 * small, rw, errc::range},
            {"the smallest page over a leaf", deep, 0, small, rw, errc::exists},
            {"the largest page over a leaf", 2 * big, big, big, rw, errc::exists},
            {"a range running into a leaf", deep - small, 0, 2 * small, rw, errc::exists},
            {"a range running out of a leaf", 3 * big - small, 0, 2 * small, rw, errc::exists},
            {"the largest page over a table holding a mapping", big, 0, big, rw, errc::exists},
        };
        for (std::uint64_t sz : page_sizes(s.geo))
            if (sz > small) cases.push_back({"a page over a table holding a mapping", deep & ~(sz - 1), 0, sz, rw, errc::exists});
        if (s.geo.ias < 64) {  // a 64-bit input space has no end to cross
            cases.push_back({"iova at the end of the input space", end, 0, small, rw, errc::range});
            cases.push_back({"range crossing the end of the input space", end - small, 0, 2 * small, rw, errc::range});
            cases.push_back({"misaligned and out of range: invalid first", end + small / 2, 0, small, rw, errc::invalid});
        }
        if (s.geo.oas < 64) {
            cases.push_back({"pa at the end of the output space", free_va, oend, small, rw, errc::range});
            cases.push_back({"pa range crossing the end of the output space", free_va, oend - small, 2 * small, rw, errc::range});
        }

        for (const auto& c : cases) {
            INFO(c.what << ": iova 0x" << std::hex << c.iova << " pa 0x" << c.pa << " size 0x" << c.size << " prot 0x"
                        << to_bits(c.perm));
            auto r = pt.map(in_addr<F>(c.iova), pa_t{c.pa}, length_t{c.size}, c.perm);
            REQUIRE(!r.ok());
            CHECK(to_string(r.error()) == to_string(c.expect));
            check_unchanged(pt, before);
        }
        CHECK(pt.iova_to_phys(in_addr<F>(deep + 42))->value == small + 42);
    }
}

TEMPLATE_LIST_TEST_CASE("a page maps over a table that unmaps left empty", "[conformance][errors]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        for (std::uint64_t sz : page_sizes_upto(s.geo, big)) {
            if (sz == small) continue;
            INFO("page 0x" << std::hex << sz);
            auto mem = make_test_memory<F>();
            auto pt = make_table<F>(s.cfg, *mem);
            const std::uint64_t va = big + sz - small;  // the last smallest page of [big, big + sz)
            REQUIRE(pt.map(in_addr<F>(va), pa_t{0}, length_t{small}, prot::read).ok());
            REQUIRE(pt.unmap(in_addr<F>(va), length_t{small})->value == small);
            CHECK(dump(pt).empty());
            auto r = pt.map(in_addr<F>(big), pa_t{sz}, length_t{sz}, prot::read);
            INFO("error " << (r.ok() ? "none" : to_string(r.error())));
            REQUIRE(r.ok());
            CHECK(translation_mismatch(pt, big, sz, sz) == "");
            CHECK(pt.unmap(in_addr<F>(big), length_t{sz})->value == sz);
            pt.reclaim();
            CHECK(pt.table_bytes() == pt.top_table_bytes());
            CHECK(mem->bytes_in_use() == root_only_bytes(pt));
        }
    }
}

TEMPLATE_LIST_TEST_CASE("unmap refuses bad ranges and cutting a leaf, changing nothing", "[conformance][errors]",
                        format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        const std::uint64_t end = ias_end(s.geo), top = ~std::uint64_t{0};
        REQUIRE(end / 4 >= big);
        for (std::uint64_t sz : page_sizes_upto(s.geo, big)) {
            INFO("leaf 0x" << std::hex << sz);
            auto mem = make_test_memory<F>();
            auto pt = make_table<F>(s.cfg, *mem);
            // Two adjacent leaves of sz at x, and the last smallest page of the input space.
            const std::uint64_t x = big;
            REQUIRE(pt.map(in_addr<F>(x), pa_t{big}, length_t{2 * sz}, prot::read).ok());
            REQUIRE(pt.map(in_addr<F>(ias_last(s.geo) - (small - 1)), pa_t{0}, length_t{small}, prot::read).ok());
            const snapshot before(pt);
            std::vector<bad_unmap> cases = {
                {"size 0", x, 0, errc::invalid},
                {"size below the smallest page", x, small / 2, errc::invalid},
                {"size not a multiple of the smallest page", x, small + small / 2, errc::invalid},
                {"iova misaligned", x + small / 2, small, errc::invalid},
                {"range wrapping", top - small + 1, 2 * small, errc::range},
            };
            if (s.geo.ias < 64) {  // a 64-bit input space has no end to cross
                cases.push_back({"iova at the end of the input space", end, small, errc::range});
                cases.push_back({"range crossing the end of the input space", end - small, 2 * small, errc::range});
            }
            if (sz > small) {
                cases.push_back({"first page of a leaf", x, small, errc::partial});
                cases.push_back({"all but the first page of a leaf", x + small, sz - small, errc::partial});
                cases.push_back({"a hole, then the first page of a leaf", x - small, 2 * small, errc::partial});
                cases.push_back({"last page of a leaf and the next leaf's first", x + sz - small, 2 * small, errc::partial});
                cases.push_back({"a whole leaf and the first page of the next", x, sz + small, errc::partial});
                cases.push_back({"the last page of the second leaf", x + 2 * sz - small, small, errc::partial});
            }
            for (const auto& c : cases) {
                INFO(c.what << ": iova 0x" << std::hex << c.iova << " size 0x" << c.size);
                auto r = pt.unmap(in_addr<F>(c.iova), length_t{c.size});
                REQUIRE(!r.ok());
                CHECK(to_string(r.error()) == to_string(c.expect));
                check_unchanged(pt, before);
            }
            CHECK(translation_mismatch(pt, x, big, 2 * sz) == "");
        }
    }
}

TEMPLATE_LIST_TEST_CASE("unmap skips holes and returns the bytes of the leaves removed", "[conformance]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        auto mem = make_test_memory<F>();
        auto pt = make_table<F>(s.cfg, *mem);
        reference_model model(s.geo);
        // Scattered leaves of every size with holes between, in [big, 4 big).
        std::uint64_t expect = 0;
        std::uint64_t va = big + small;  // a hole first
        for (std::uint64_t sz : page_sizes(s.geo)) {
            va = (va + sz - 1) & ~(sz - 1);
            if (va + sz > 4 * big) break;
            REQUIRE(pt.map(in_addr<F>(va), pa_t{va}, length_t{sz}, prot::read).ok());
            REQUIRE(model.map(va, va, sz, prot::read).ok());
            expect += sz;
            va += sz + small;  // and a hole after each
        }
        CHECK(pt.unmap(in_addr<F>(0), length_t{big})->value == 0);  // nothing there
        auto r = pt.unmap(in_addr<F>(0), length_t{4 * big});
        REQUIRE(r.ok());
        CHECK(r->value == expect);
        CHECK(dump(pt).empty());
        CHECK(unmapped_mismatch(pt, big, 3 * big) == "");
        pt.reclaim();
        CHECK(pt.table_bytes() == pt.top_table_bytes());
        CHECK(mem->bytes_in_use() == root_only_bytes(pt));
    }
}

TEMPLATE_LIST_TEST_CASE("unmap with split removes only the range; every other page keeps its address",
                        "[conformance][split]", format_list) {
    using F = TestType;
    for (const auto& s : samples<F>()) {
        INFO(s.label);
        const std::uint64_t small = smallest_page(s.geo), big = largest_page(s.geo);
        REQUIRE(ias_end(s.geo) / 4 >= big);
        REQUIRE(oas_end(s.geo) / 4 >= big);
        for (std::uint64_t sz : sizes_to_check(s.geo, big)) {
            if (sz == small) continue;
            const std::uint64_t x = big, pa = 2 * big;
            struct cut {
                const char* what;
                std::uint64_t iova, size, removed;
            };
            const std::vector<cut> cuts = {
                {"second page", x + small, small, small},
                {"middle page", x + sz / 2, small, small},
                {"last page", x + sz - small, small, small},
                {"all but the first and last pages", x + small, sz - 2 * small, sz - 2 * small},
                {"first half of the second leaf and more", x + sz + sz / 2, sz, sz / 2},
                {"across two leaves", x + sz / 2, sz, sz},
                {"exactly one leaf", x, sz, sz},
            };
            for (const auto& c : cuts) {
                if (c.size == 0) continue;  // a leaf of two smallest pages has no inside
                INFO("leaf 0x" << std::hex << sz << ", " << c.what << ": iova 0x" << c.iova << " size 0x" << c.size);
                auto mem = make_test_memory<F>();
                auto pt = make_table<F>(s.cfg, *mem);
                reference_model model(s.geo);
                REQUIRE(pt.map(in_addr<F>(x), pa_t{pa}, length_t{2 * sz}, prot::read | prot::noexec).ok());
                REQUIRE(model.map(x, pa, 2 * sz, prot::read | prot::noexec).ok());
                auto r = pt.unmap(in_addr<F>(c.iova), length_t{c.size}, unmap_mode::split);
                REQUIRE(r.ok());
                CHECK(r->value == c.removed);
                REQUIRE(model.unmap(c.iova, c.size, true)->value == c.removed);
                CHECK(dump_difference(dump(pt), model.expected_dump<F>(s.cfg)) == "");
                const std::uint64_t cut_end = std::min(c.iova + c.size, x + 2 * sz);
                CHECK(translation_mismatch(pt, x, pa, c.iova - x) == "");
                CHECK(unmapped_mismatch(pt, c.iova, cut_end - c.iova) == "");
                if (cut_end < x + 2 * sz) CHECK(translation_mismatch(pt, cut_end, pa + (cut_end - x), x + 2 * sz - cut_end) == "");
                // Every leaf left is one of the table's page sizes and keeps the permissions.
                for (const auto& e : dump(pt)) {
                    CHECK(((s.geo.pgsize_bitmap >> e.size_lg2) & 1) == 1);
                    CHECK(F::leaf_prot(s.cfg, e.level, static_cast<typename F::word>(e.raw)) ==
                          F::leaf_prot(s.cfg, e.level, F::make_leaf(s.cfg, e.level, e.size_lg2, 0, prot::read | prot::noexec)));
                }
                // What is left unmaps exactly, and reclaim then leaves the root alone.
                auto rest = pt.unmap(in_addr<F>(x), length_t{2 * sz});
                REQUIRE(rest.ok());
                CHECK(rest->value == 2 * sz - c.removed);
                pt.reclaim();
                CHECK(pt.table_bytes() == pt.top_table_bytes());
                CHECK(mem->bytes_in_use() == root_only_bytes(pt));
            }
        }
    }
}
