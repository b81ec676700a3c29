// SPDX-License-Identifier: MIT
#pragma once
/// @file all.hpp
/// The one list of formats. Tests, benchmarks, fuzzers and `iopt` iterate it; adding a format
/// means adding its header pair (`<name>_walker.hpp`, the walker; `<name>.hpp`, its profile
/// deriving from it; formats/README.md) and one entry here.
#include <cstddef>
#include <type_traits>

#include <boost/hana/all_of.hpp>
#include <boost/hana/bool.hpp>
#include <boost/hana/concat.hpp>
#include <boost/hana/equal.hpp>
#include <boost/hana/filter.hpp>
#include <boost/hana/flatten.hpp>
#include <boost/hana/index_if.hpp>
#include <boost/hana/optional.hpp>
#include <boost/hana/transform.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include "../engine/profile.hpp"

#include "amd_v1.hpp"
#include "arm_lpae.hpp"
#include "arm_v7s.hpp"
#include "riscv.hpp"
#include "vtd_fl.hpp"
#include "vtd_sl.hpp"

namespace iopgtable {

/// Every concrete format type the library implements (one per compile-time variant).
inline constexpr auto all_formats = boost::hana::tuple_t<
    arm_lpae_s1_4k, arm_lpae_s1_16k, arm_lpae_s1_64k,
    arm_lpae_s2_4k, arm_lpae_s2_16k, arm_lpae_s2_64k,
    arm_v7s,
    vtd_sl, vtd_fl,
    amd_v1,
    riscv_s1, riscv_s2>;

/// One nested combination: tables of S1 (IOVA → IPA) whose table fetches and outputs are
/// translated by a table of S2 (IPA → PA).
template <class S1, class S2>
struct nested_pair {
    using stage1 = S1;
    using stage2 = S2;
};

/// Whether S1 sits on S2 in a nested translation: S1 takes IOVAs (a stage-1 or single-stage
/// format), S2 takes IPAs (a stage-2 format), and both are one architecture's (the same sharing
/// model: Arm stage 1 or short-descriptor over Arm stage 2, x86-64 first stage over VT-d second
/// stage or AMD-Vi v1, RISC-V first stage over G-stage).
template <class S1, class S2>
inline constexpr bool nests_over = std::is_same_v<typename S1::input_address, iova_t> &&
                                   std::is_same_v<typename S2::input_address, ipa_t> &&
                                   S1::sharing_model == S2::sharing_model;

namespace detail {
/// F's position in all_formats.
template <class F>
inline constexpr std::size_t list_position = std::remove_reference_t<decltype(
    boost::hana::index_if(all_formats, boost::hana::equal.to(boost::hana::type_c<F>)).value())>::value;
} // namespace detail

/// Every nested pair of the list, as `nested_pair<S1, S2>` types. They are in the order of the
/// later of their two formats in the list; pairs with the same later format L come as (S1, L)
/// in list order of S1, then (L, S2) in list order of S2. So a format appended to the list
/// appends its pairs, and the index a fuzz seed picks a pair by keeps its meaning
/// (fuzz/format_names.txt). The nested tests, the nested fuzzer and the nested benchmarks
/// iterate it.
inline constexpr auto nested_pairs = boost::hana::flatten(boost::hana::transform(all_formats, [](auto later) {
    using L = typename decltype(later)::type;
    auto below = boost::hana::filter(all_formats, [](auto s1) {
        using S1 = typename decltype(s1)::type;
        return boost::hana::bool_c<(detail::list_position<S1> < detail::list_position<L>) && nests_over<S1, L>>;
    });
    auto above = boost::hana::filter(all_formats, [](auto s2) {
        using S2 = typename decltype(s2)::type;
        return boost::hana::bool_c<(detail::list_position<S2> < detail::list_position<L>) && nests_over<L, S2>>;
    });
    return boost::hana::concat(
        boost::hana::transform(below, [](auto s1) { return boost::hana::type_c<nested_pair<typename decltype(s1)::type, L>>; }),
        boost::hana::transform(above, [](auto s2) { return boost::hana::type_c<nested_pair<L, typename decltype(s2)::type>>; }));
}));

static_assert(boost::hana::all_of(all_formats, [](auto f) {
    return boost::hana::bool_c<complete_format<typename decltype(f)::type>>;
}), "every format of the list meets its contract (engine/format.hpp, engine/profile.hpp)");

} // namespace iopgtable
