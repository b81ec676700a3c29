// SPDX-License-Identifier: MIT
#pragma once
/// @file format_text.hpp
/// How iopt names page-table-sharing formats (PROBE_TABLE entries), shared by the modes that
/// print them (`iopt probe`, `iopt virtio`).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <iopgtable/sharing/descriptors.hpp>

#include "hex.hpp"

namespace iopt {

/// The sizes field of a format: ARM granules as `4k,16k,64k`, X86 level counts as `4,5`.
inline std::string size_list(std::uint32_t model, std::uint32_t sizes) {
    namespace sharing = iopgtable::sharing;
    std::string s;
    for (unsigned b = 0; b < 32; ++b) {
        if (!(sizes & (1u << b))) continue;
        if (!s.empty()) s += ',';
        if (model == sharing::model_arm) s += b >= 10 ? std::to_string(1u << (b - 10)) + "k" : std::to_string(1u << b);
        else s += std::to_string(b);
    }
    return s.empty() ? "none" : s;
}

/// `arm lpae-64`, `x86 vtd-first-stage`, ... (`model N` for an unknown model).
inline std::string variant_name(std::uint32_t model, std::uint32_t variant) {
    namespace sharing = iopgtable::sharing;
    if (model == sharing::model_arm) {
        if (variant == sharing::arm_lpae64) return "arm lpae-64";
        if (variant == sharing::arm_lpae32) return "arm lpae-32";
        if (variant == sharing::arm_short) return "arm short-descriptor";
        return "arm variant " + std::to_string(variant);
    }
    if (model == sharing::model_x86) {
        if (variant == sharing::x86_vtd_first_stage) return "x86 vtd-first-stage";
        if (variant == sharing::x86_vtd_second_stage) return "x86 vtd-second-stage";
        return "x86 variant " + std::to_string(variant);
    }
    return "model " + std::to_string(model);
}

/// A 64-byte config blob from up to 128 hex digits (wire order, `0x` optional); shorter input
/// is zero-padded.
inline std::optional<iopgtable::sharing::blob> parse_blob(std::string_view hex) {
    if (hex.size() > 2 && hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex.remove_prefix(2);
    if (hex.size() > 128 || hex.size() % 2 != 0) return std::nullopt;
    iopgtable::sharing::blob b{};
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        auto v = parse_hex(hex.substr(i, 2));
        if (!v) return std::nullopt;
        b[i / 2] = static_cast<std::uint8_t>(*v);
    }
    return b;
}

} // namespace iopt
