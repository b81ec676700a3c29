// SPDX-License-Identifier: MIT
// Known-answer vectors: every record of formats/<F::folder>/vectors.txt that names F and whose
// options F accepts is checked against F's own functions.
#include <boost/hana/for_each.hpp>

#include "support/format_list.hpp"
#include "support/vectors.hpp"

using namespace iopgtable;
using namespace iopgtable::test;

namespace {

struct tally {
    int geom = 0, leaf = 0, table = 0, reg = 0;
};

/// The lowest level whose leaf sizes include 2^lg2, or max_levels when none does.
template <class F>
unsigned lowest_leaf_level(unsigned lg2) {
    for (unsigned l = 0; l < F::max_levels; ++l)
        if ((F::leaf_sizes(l) >> lg2) & 1) return l;
    return F::max_levels;
}

template <class F>
void check_geom(const vector_record& r, const result<typename F::config>& cfg) {
    if (r.has("error")) {
        const std::string& want = r.field("error");
        if (!cfg.ok()) {
            CHECK(std::string(to_string(cfg.error())) == want);
        } else {
            auto g = F::make_geometry(*cfg);
            REQUIRE(!g.ok());
            CHECK(std::string(to_string(g.error())) == want);
        }
        return;
    }
    REQUIRE(cfg.ok());
    auto g = F::make_geometry(*cfg);
    REQUIRE(g.ok());
    CHECK(g->levels == r.number("levels"));
    CHECK((std::uint64_t{1} << g->top_index_lg2) == r.number("top_entries"));
}

template <class F>
void check_leaf(const vector_record& r, const typename F::config& cfg) {
    using word = typename F::word;
    const std::uint64_t size = r.number("size"), oa = r.number("oa"), raw = r.number("raw");
    const prot p = prot_from_bits(static_cast<std::uint32_t>(r.number("prot")));
    REQUIRE(std::has_single_bit(size));
    const unsigned lg2 = lg2_of(size);
    const unsigned level = lowest_leaf_level<F>(lg2);
    REQUIRE(level < F::max_levels);
    const auto w = static_cast<word>(raw);
    REQUIRE(static_cast<std::uint64_t>(w) == raw);  // the expected entry fits the format's word
    CHECK(static_cast<std::uint64_t>(F::make_leaf(cfg, level, lg2, oa, p)) == raw);
    // And it decodes back.
    REQUIRE(F::classify(cfg, level, w) == entry_kind::leaf);
    CHECK(F::leaf_lg2(cfg, level, w) == lg2);
    CHECK(F::leaf_address(cfg, level, w) == oa);
    const prot back = F::leaf_prot(cfg, level, w);
    CHECK(F::make_leaf(cfg, level, lg2, oa, back) == w);
    if (has(p, prot::read)) CHECK(has(back, prot::read));
    if (has(p, prot::write)) CHECK(has(back, prot::write));
}

template <class F>
void check_table(const vector_record& r, const typename F::config& cfg, const geometry& g) {
    using word = typename F::word;
    const std::uint64_t pa = r.number("pa"), raw = r.number("raw");
    REQUIRE(g.levels >= 2);
    // A record that names no level: the entry must be the same at every level that holds
    // tables. One that does (formats whose table entries name their level, such as AMD-Vi's Next
    // Level): that level only.
    const unsigned first = r.has("level") ? static_cast<unsigned>(r.number("level")) : 1;
    const unsigned end = r.has("level") ? first + 1 : g.levels;
    REQUIRE(first >= 1);
    REQUIRE(end <= g.levels);
    for (unsigned level = first; level < end; ++level) {
        INFO("level " << level);
        CHECK(static_cast<std::uint64_t>(F::make_table(cfg, level, pa)) == raw);
        CHECK(F::classify(cfg, level, static_cast<word>(raw)) == entry_kind::table);
        CHECK(F::table_address(cfg, level, static_cast<word>(raw)) == pa);
    }
}

template <class F>
void check_reg(const vector_record& r, const typename F::config& cfg, const geometry& g) {
    const auto regs = F::registers(cfg, g, pa_t{r.number("root")});
    const auto v = regs.get(r.field("name"));
    REQUIRE(v.has_value());
    CHECK(*v == r.number("value"));
}

/// Checks every record for F; returns how many of each kind it checked.
template <class F>
tally check_vectors(const std::vector<vector_record>& records) {
    tally t;
    for (const auto& r : records) {
        if (r.format != F::name || !F::accepts(r.opts)) continue;
        INFO(r.where << ": " << r.text);
        const auto cfg = F::config_from(r.opts);
        if (r.kind == "geom") {
            check_geom<F>(r, cfg);
            ++t.geom;
            continue;
        }
        REQUIRE(cfg.ok());
        const auto g = F::make_geometry(*cfg);
        REQUIRE(g.ok());
        if (r.kind == "leaf") {
            check_leaf<F>(r, *cfg);
            ++t.leaf;
        } else if (r.kind == "table") {
            check_table<F>(r, *cfg, *g);
            ++t.table;
        } else if (r.kind == "reg") {
            check_reg<F>(r, *cfg, *g);
            ++t.reg;
        } else {
            FAIL("record kind without a checker: " << r.kind);
        }
    }
    return t;
}

} // namespace

TEMPLATE_LIST_TEST_CASE("known-answer vectors", "[vectors]", format_list) {
    using F = TestType;
    const auto records = read_vectors(vectors_path(F::folder));
    const tally t = check_vectors<F>(records);
    INFO(F::name << ": geom " << t.geom << ", leaf " << t.leaf << ", table " << t.table << ", reg " << t.reg);
    // Every variant has vectors of every kind; too few means the reader skipped them.
    CHECK(t.geom >= 5);
    CHECK(t.leaf >= 10);
    CHECK(t.table >= 2);
    CHECK(t.reg >= 5);
}

TEST_CASE("every vector record belongs to a format in the list", "[vectors]") {
    std::map<std::string, std::vector<vector_record>> by_folder;
    boost::hana::for_each(all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if (!by_folder.count(F::folder)) by_folder[F::folder] = read_vectors(vectors_path(F::folder));
    });
    REQUIRE(!by_folder.empty());
    std::size_t records = 0;
    for (const auto& entry : by_folder) {
        const auto& folder = entry.first;  // not a structured binding: clang 14 cannot capture one
        const auto& list = entry.second;
        for (const auto& r : list) {
            int takers = 0;
            boost::hana::for_each(all_formats, [&](auto t) {
                using F = typename decltype(t)::type;
                if (folder == F::folder && r.format == F::name && F::accepts(r.opts)) ++takers;
            });
            INFO(r.where << ": " << r.text);
            CHECK(takers == 1);
            ++records;
        }
    }
    CHECK(records >= 100 * by_folder.size());
}
