// SPDX-License-Identifier: MIT
#pragma once
/// @file descriptors.hpp
/// Format descriptors for page-table sharing: the 64-byte `format` blob a device puts in each
/// PROBE_TABLE pg_format entry, and the 64-byte `config` blob a driver puts in ATTACH_TABLE.
/// Both are defined per (model, variant) in formats/README.md, the project's registry:
///
/// format blob (every model): le32 variant @0, le32 sizes @4 (read as the model's size_meaning
/// says: bit n = a 2^n-byte granule, or n-level tables), u8 max_ias @8, u8 max_oas @9, u8
/// tag_bits @10 (ASID / domain-id bits), u8 flags @11 (bit 0 hardware access flag, bit 1 hardware
/// dirty state, bit 2 snoop control, bit 7 stall: page requests with F_FAULT), le64
/// pgsize_bitmap @12, zero to 63.
///
/// config blob: le32 variant @0; the rest is the format's own layout (its `config_to_blob` /
/// `config_from_blob`, documented in its header and folder). The model and variant numbers are
/// the registry's (formats/sharing_models.hpp); which format reads which blob comes from the
/// format list: nothing here names a format or a model.
#include <array>
#include <optional>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <variant>

#include <boost/hana/for_each.hpp>

#include "../core/blob.hpp"
#include "../core/result.hpp"
#include "../engine/options.hpp"
#include "../engine/profile.hpp"
#include "../formats/all.hpp"
#include "../formats/sharing_models.hpp"
#include "../virtio/status.hpp"
#include "../virtio/wire.hpp"

namespace iopgtable::sharing {

using iopgtable::blob;
// The status vocabulary is virtio's (virtio/status.hpp); these names stay for callers.
using virtio::checked;
using virtio::refusal;
using virtio::to_status;

inline constexpr std::uint8_t cap_access_flag = 1u << 0, cap_dirty = 1u << 1, cap_snoop = 1u << 2;
/// The device can stall DMA through a table of this format and ask the guest for the page
/// (ATTACH_TABLE F_FAULT, feature PAGE_REQUESTS; virtio/README.md "Page requests"). Set only
/// when the host can stall and the driver accepted PAGE_REQUESTS.
inline constexpr std::uint8_t cap_stall = 1u << 7;

/// The decoded `format` blob of one pg_format entry.
struct format_caps {
    std::uint32_t model = 0;
    std::uint32_t variant = 0;
    std::uint32_t sizes = 0;  ///< bit n: a 2^n-byte granule or n-level tables, as the model's size_meaning says
    std::uint8_t max_ias = 0, max_oas = 0, tag_bits = 0, flags = 0;
    std::uint64_t pgsize_bitmap = 0;
    friend bool operator==(const format_caps&, const format_caps&) = default;
};

/// Writes a pg_format entry for `c`.
inline virtio::pg_format encode_format(const format_caps& c) noexcept {
    virtio::pg_format f;
    f.model = c.model;
    blob b{};
    blob_put<std::uint32_t>(b, 0, c.variant);
    blob_put<std::uint32_t>(b, 4, c.sizes);
    b[8] = c.max_ias;
    b[9] = c.max_oas;
    b[10] = c.tag_bits;
    b[11] = c.flags;
    blob_put<std::uint64_t>(b, 12, c.pgsize_bitmap);
    std::memcpy(f.format, b.data(), 64);
    return f;
}

/// Reads a pg_format entry. Refuses model 0 (an unused slot), reserved bytes set.
inline checked<format_caps> decode_format(const virtio::pg_format& f) noexcept {
    format_caps c;
    c.model = f.model;
    if (c.model == 0) return refusal{virtio::status::inval, "model"};
    const std::uint8_t* b = f.format;
    c.variant = blob_take<std::uint32_t>(b, 0);
    c.sizes = blob_take<std::uint32_t>(b, 4);
    c.max_ias = b[8];
    c.max_oas = b[9];
    c.tag_bits = b[10];
    c.flags = b[11];
    c.pgsize_bitmap = blob_take<std::uint64_t>(b, 12);
    if (!blob_zero_from(b, 20)) return refusal{virtio::status::inval, "format.reserved"};
    return c;
}

/// A guest table's configuration as carried by ATTACH_TABLE: the variant, the register values
/// the format reads its configuration from, and the tag (ASID / domain id).
struct table_config {
    std::uint32_t model = 0, variant = 0;
    register_set regs;
    std::uint32_t tag = 0;
};

/// Builds the config blob of a table of format F (guest-shareable).
template <shareable_format F>
blob encode_config_for(const table_config& t) noexcept {
    blob b{};
    blob_put<std::uint32_t>(b, 0, F::sharing_variant);
    F::config_to_blob(t.regs, t.tag, b);
    return b;
}

/// Reads a config blob as format F's (its variant already matched). Refuses reserved bytes set
/// and malformed fields (INVAL), as the format's `config_from_blob` says.
template <shareable_format F>
checked<table_config> decode_config_for(const std::uint8_t* b) noexcept {
    table_config t;
    t.model = F::sharing_model;
    t.variant = blob_take<std::uint32_t>(b, 0);
    std::string_view why;
    auto regs = F::config_from_blob(b, t.tag, why);
    if (!regs) return refusal{to_status(regs.error()), why};
    t.regs = *regs;
    return t;
}

/// Calls `fn(boost::hana::type_c<F>)` for the first guest-shareable format of the list with
/// this model and variant; false when none has them.
template <class Fn>
bool with_shareable_format(std::uint32_t model, std::uint32_t variant, Fn&& fn) {
    bool found = false;
    boost::hana::for_each(all_formats, [&](auto t) {
        using F = typename decltype(t)::type;
        if constexpr (F::guest_shareable) {
            if (!found && F::sharing_model == model && F::sharing_variant == variant) {
                found = true;
                fn(t);
            }
        }
    });
    return found;
}

/// Builds the config blob for `t` (model, variant, registers, tag) through the format list.
/// Refuses (UNSUPP) a variant no guest-shareable format implements. Registers the variant does
/// not carry are ignored.
inline checked<blob> encode_config(const table_config& t) noexcept {
    std::optional<blob> out;
    with_shareable_format(t.model, t.variant, [&](auto ty) { out = encode_config_for<typename decltype(ty)::type>(t); });
    if (!out) return refusal{virtio::status::unsupp, "config.variant"};
    return *out;
}

/// Reads a config blob for `model` through the format list. Refuses models the registry does
/// not know and variants no guest-shareable format implements (UNSUPP), reserved bytes set and
/// malformed fields (INVAL).
inline checked<table_config> decode_config(std::uint32_t model, const std::uint8_t* b) noexcept {
    std::optional<checked<table_config>> out;
    const std::uint32_t variant = blob_take<std::uint32_t>(b, 0);
    with_shareable_format(model, variant, [&](auto ty) { out.emplace(decode_config_for<typename decltype(ty)::type>(b)); });
    if (out) return std::move(*out);
    if (!find_model(model)) return refusal{virtio::status::unsupp, "model"};
    return refusal{virtio::status::unsupp, "config.variant"};
}

} // namespace iopgtable::sharing
