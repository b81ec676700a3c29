// SPDX-License-Identifier: MIT
#pragma once
/// @file all.hpp
/// The one list of formats. Tests, benchmarks, fuzzers and `iopt` iterate it; adding a format
/// means adding its header and one entry here.
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include "amd_v1.hpp"
#include "arm_lpae.hpp"
#include "arm_v7s.hpp"
#include "vtd_fl.hpp"
#include "vtd_sl.hpp"

namespace iopgtable {

/// Every concrete format type the library implements (one per compile-time variant).
inline constexpr auto all_formats = boost::hana::tuple_t<
    arm_lpae_s1_4k, arm_lpae_s1_16k, arm_lpae_s1_64k,
    arm_lpae_s2_4k, arm_lpae_s2_16k, arm_lpae_s2_64k,
    arm_v7s,
    vtd_sl, vtd_fl,
    amd_v1>;

} // namespace iopgtable
