// SPDX-License-Identifier: MIT
#pragma once
/// @file format_text.hpp
/// How iopt names page-table-sharing formats (PROBE_TABLE entries), shared by the modes that
/// print them (`iopt probe`, `iopt virtio`).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <iopgtable/formats/sharing_models.hpp>
#include <iopgtable/sharing/descriptors.hpp>

#include "hex.hpp"

namespace iopt {

/// The sizes field of a format, read as its model's registry entry says: granules as
/// `4k,16k,64k`, level counts (and an unknown model's bits) as `4,5`.
inline std::string size_list(std::uint32_t model, std::uint32_t sizes) {
    namespace sharing = iopgtable::sharing;
    const auto* m = sharing::find_model(model);
    const bool bytes = m && m->sizes == sharing::size_meaning::granule_bytes;
    std::string s;
    for (unsigned b = 0; b < 32; ++b) {
        if (!(sizes & (1u << b))) continue;
        if (!s.empty()) s += ',';
        if (bytes) s += b >= 10 ? std::to_string(1u << (b - 10)) + "k" : std::to_string(1u << b);
        else s += std::to_string(b);
    }
    return s.empty() ? "none" : s;
}

/// The sizes field's name (`granules`, `levels`); `levels` for an unknown model.
inline std::string sizes_name(std::uint32_t model) {
    const auto* m = iopgtable::sharing::find_model(model);
    return std::string(m ? m->sizes_name : "levels");
}

/// The tag_bits field's name (`asid_bits`, `domain_bits`); `domain_bits` for an unknown model.
inline std::string tag_name(std::uint32_t model) {
    const auto* m = iopgtable::sharing::find_model(model);
    return std::string(m ? m->tag_name : "domain_bits");
}

/// `arm lpae-64`, `x86 vtd-first-stage`, ... from the registry; `arm variant N` for a variant
/// it does not list, `model N` for an unknown model.
inline std::string variant_name(std::uint32_t model, std::uint32_t variant) {
    namespace sharing = iopgtable::sharing;
    const auto* m = sharing::find_model(model);
    if (!m) return "model " + std::to_string(model);
    if (const auto* v = sharing::find_variant(model, variant)) return std::string(m->name) + " " + std::string(v->name);
    return std::string(m->name) + " variant " + std::to_string(variant);
}

/// The flags of a PROBE_TABLE entry as `access,dirty,snoop,stall` (those set, in that order),
/// `none` when none is.
inline std::string flag_list(std::uint32_t flags) {
    std::string s;
    if (flags & iopgtable::sharing::cap_access_flag) s += "access,";
    if (flags & iopgtable::sharing::cap_dirty) s += "dirty,";
    if (flags & iopgtable::sharing::cap_snoop) s += "snoop,";
    if (flags & iopgtable::sharing::cap_stall) s += "stall,";
    if (s.empty()) return "none";
    s.pop_back();
    return s;
}

/// `1 ARM, 2 X86`: the registered models, for messages.
inline std::string model_list() {
    std::string s;
    for (const auto& m : iopgtable::sharing::models) {
        if (!s.empty()) s += ", ";
        s += std::to_string(m.id) + " ";
        for (char c : m.name) s += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    }
    return s;
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
