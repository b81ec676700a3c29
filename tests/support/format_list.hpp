// SPDX-License-Identifier: MIT
#pragma once
/// @file format_list.hpp
/// Test-side view of `iopgtable::all_formats`: the same list as a `std::tuple<F...>` for
/// Catch2's TEMPLATE_LIST_TEST_CASE, the sample configurations of one format with their
/// geometries, page-size helpers, and a full dump of a table through `visit_all`.
#include <bit>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <boost/hana/length.hpp>
#include <boost/hana/unpack.hpp>
#include <catch2/catch.hpp>
#include <iopgtable/iopgtable.hpp>

#include "leaf_dump.hpp"

namespace iopgtable::test {

namespace detail {
struct to_std_tuple_fn {
    template <class... T>
    constexpr auto operator()(T...) const noexcept {
        return std::type_identity<std::tuple<typename T::type...>>{};
    }
};
} // namespace detail

/// Every format of `all_formats`, as `std::tuple<F...>` (a type list; never instantiated).
using format_list = typename decltype(boost::hana::unpack(all_formats, detail::to_std_tuple_fn{}))::type;

static_assert(std::tuple_size_v<format_list> == decltype(boost::hana::length(all_formats))::value);

/// The input address type of F built from a number.
template <class F>
constexpr typename F::input_address in_addr(std::uint64_t v) noexcept {
    return typename F::input_address{v};
}

/// One configuration of F with what the format makes of it.
template <class F>
struct sample {
    typename F::config cfg;
    geometry geo;
    std::string label;  ///< for INFO(): format name, index and geometry
};

/// Human-readable geometry.
inline std::string describe(const geometry& g) {
    std::ostringstream s;
    s << "ias=" << g.ias << " oas=" << g.oas << " levels=" << g.levels << " top_index_lg2=" << g.top_index_lg2
      << " pgsizes=0x" << std::hex << g.pgsize_bitmap;
    return s.str();
}

/// F::sample_configs() with their geometries. Fails the test when the list is empty or a
/// sample configuration is refused by F::make_geometry.
template <class F>
std::vector<sample<F>> samples() {
    std::vector<sample<F>> out;
    const auto cfgs = F::sample_configs();
    REQUIRE(!cfgs.empty());
    for (std::size_t i = 0; i < cfgs.size(); ++i) {
        auto g = F::make_geometry(cfgs[i]);
        INFO(F::name << " sample #" << i);
        REQUIRE(g.ok());
        out.push_back({cfgs[i], *g, std::string(F::name) + " #" + std::to_string(i) + " " + describe(*g)});
    }
    return out;
}

/// Page sizes of a geometry, ascending.
inline std::vector<std::uint64_t> page_sizes(const geometry& g) {
    std::vector<std::uint64_t> v;
    for (unsigned b = 0; b < 64; ++b)
        if ((g.pgsize_bitmap >> b) & 1) v.push_back(std::uint64_t{1} << b);
    return v;
}
/// log2 of a power of two.
inline unsigned lg2_of(std::uint64_t size) { return static_cast<unsigned>(std::countr_zero(size)); }
inline std::uint64_t smallest_page(const geometry& g) { return g.pgsize_bitmap & (~g.pgsize_bitmap + 1); }
/// 2^ias (the first input address out of range), saturated at 2^64 - 1 for ias 64.
inline std::uint64_t ias_end(const geometry& g) { return g.ias >= 64 ? ~std::uint64_t{0} : std::uint64_t{1} << g.ias; }
inline std::uint64_t oas_end(const geometry& g) { return g.oas >= 64 ? ~std::uint64_t{0} : std::uint64_t{1} << g.oas; }
/// The last input address in range (2^ias - 1, ias 64 included).
inline std::uint64_t ias_last(const geometry& g) { return low_mask(g.ias); }
/// The largest page size of which `n` fit in the input space and in the output space. Most
/// formats' largest page fits four times over; where a format's pages reach half the input
/// space, the tests that lay out several of the largest pages use the largest that fits.
inline std::uint64_t largest_page(const geometry& g, std::uint64_t n = 4) {
    const std::uint64_t room = std::min(ias_end(g), oas_end(g)) / n;
    if (room == 0) return 0;
    const std::uint64_t top = std::bit_floor(room);  // every size up to room: top and below
    return std::bit_floor(g.pgsize_bitmap & (top | (top - 1)));
}
/// The page sizes up to `largest`, ascending.
inline std::vector<std::uint64_t> page_sizes_upto(const geometry& g, std::uint64_t largest) {
    auto v = page_sizes(g);
    while (!v.empty() && v.back() > largest) v.pop_back();
    return v;
}

/// Bytes a table memory charges for a table of `bytes` (both models round up to 64).
inline std::uint64_t charged_bytes(std::uint64_t bytes) { return bytes < 64 ? 64 : bytes; }

// ---------------------------------------------------------------------------- dumps

/// Every leaf entry of `pt`, in input-address order. Fails the test if the visit fails.
template <class PT>
std::vector<dump_entry> dump(const PT& pt) {
    std::vector<dump_entry> out;
    auto r = pt.visit_all([&](const leaf_entry<typename PT::format>& e) {
        out.push_back({e.iova, e.level, e.size_lg2, static_cast<std::uint64_t>(e.raw)});
        return true;
    });
    REQUIRE(r.ok());
    return out;
}

/// "" when the dumps are equal, else the first difference (dumps can hold 10^5 entries, too
/// many for Catch to print whole).
inline std::string dump_difference(const std::vector<dump_entry>& got, const std::vector<dump_entry>& want) {
    const std::size_t n = std::min(got.size(), want.size());
    std::ostringstream s;
    for (std::size_t i = 0; i < n; ++i) {
        if (!(got[i] == want[i])) {
            s << "entry " << i << ": got " << got[i] << ", want " << want[i];
            return s.str();
        }
    }
    if (got.size() != want.size()) {
        s << "got " << got.size() << " entries, want " << want.size() << "; first extra: "
          << (got.size() > n ? got[n] : want[n]);
        return s.str();
    }
    return {};
}

/// Prot values to try: every combination of the six flags that `prot_valid` accepts.
inline std::vector<prot> valid_prots() {
    std::vector<prot> v;
    for (std::uint32_t b = 0; b <= prot_all_bits; ++b)
        if (prot_valid(prot_from_bits(b))) v.push_back(prot_from_bits(b));
    return v;
}

} // namespace iopgtable::test
