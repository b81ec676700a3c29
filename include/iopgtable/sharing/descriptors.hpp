// SPDX-License-Identifier: MIT
#pragma once
/// @file descriptors.hpp
/// Format descriptors for page-table sharing: the 64-byte `format` blob a device puts in each
/// PROBE_TABLE pg_format entry, and the 64-byte `config` blob a driver puts in ATTACH_TABLE.
/// Both are defined per (model, variant) in formats/README.md, the project's registry:
///
/// format blob (every model): le32 variant @0, le32 sizes @4 (ARM: bit n set = 2^n-byte granule;
/// X86: bit n set = n-level tables), u8 max_ias @8, u8 max_oas @9, u8 tag_bits @10 (ARM ASID,
/// X86 domain-id bits), u8 flags @11 (bit 0 hardware access flag, bit 1 hardware dirty state,
/// bit 2 snoop control, bit 7 stall: page requests with F_FAULT), le64 pgsize_bitmap @12, zero to 63.
///
/// config blobs: ARM LPAE 64-bit (variant 1): le32 variant @0, le32 0 @4, le64 tcr @8 (TCR_EL1
/// layout), le64 mair @16, le32 asid @24. ARM short-descriptor (variant 3): le32 variant @0, le32
/// tcr @4, le32 prrr @8, le32 nmrr @12, le32 asid @16. X86 VT-d first-stage (variant 1): le32
/// variant @0, le32 address width @4 (48 or 57), le32 domain id @8. Every other byte is reserved
/// and must be zero.
#include <array>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <variant>

#include "../core/le.hpp"
#include "../core/result.hpp"
#include "../engine/options.hpp"
#include "../virtio/wire.hpp"

namespace iopgtable::sharing {

using blob = std::array<std::uint8_t, 64>;

inline constexpr std::uint32_t model_arm = 1, model_x86 = 2;
inline constexpr std::uint32_t arm_lpae64 = 1, arm_lpae32 = 2, arm_short = 3;
inline constexpr std::uint32_t x86_vtd_first_stage = 1, x86_vtd_second_stage = 2;

inline constexpr std::uint8_t cap_access_flag = 1u << 0, cap_dirty = 1u << 1, cap_snoop = 1u << 2;
/// The device can stall DMA through a table of this format and ask the guest for the page
/// (ATTACH_TABLE F_FAULT, feature PAGE_REQUESTS; virtio/README.md "Page requests"). Set only
/// when the host can stall and the driver accepted PAGE_REQUESTS.
inline constexpr std::uint8_t cap_stall = 1u << 7;

/// A refusal: the virtio status to answer with and the field at fault.
struct refusal {
    virtio::status code = virtio::status::inval;
    std::string_view field;
};

/// A value, or the refusal that stands in its way.
template <class T>
class checked {
public:
    checked(T v) : v_(std::move(v)) {}  // NOLINT
    checked(refusal r) : v_(r) {}       // NOLINT
    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    T& value() noexcept { return std::get<0>(v_); }
    const T& value() const noexcept { return std::get<0>(v_); }
    T* operator->() noexcept { return &value(); }
    const T* operator->() const noexcept { return &value(); }
    T& operator*() noexcept { return value(); }
    const refusal& why() const noexcept { return std::get<1>(v_); }

private:
    std::variant<T, refusal> v_;
};

/// The virtio status an engine error becomes.
constexpr virtio::status to_status(errc e) noexcept {
    switch (e) {
    case errc::invalid: return virtio::status::inval;
    case errc::range: return virtio::status::range;
    case errc::unsupported: return virtio::status::unsupp;
    case errc::nomem: return virtio::status::nomem;
    case errc::exists: return virtio::status::inval;
    case errc::partial: return virtio::status::range;
    case errc::fault: return virtio::status::fault;
    }
    return virtio::status::deverr;
}

/// The decoded `format` blob of one pg_format entry.
struct format_caps {
    std::uint32_t model = 0;
    std::uint32_t variant = 0;
    std::uint32_t sizes = 0;  ///< ARM: granules (bit n = 2^n bytes); X86: level counts (bit n = n levels)
    std::uint8_t max_ias = 0, max_oas = 0, tag_bits = 0, flags = 0;
    std::uint64_t pgsize_bitmap = 0;
    friend bool operator==(const format_caps&, const format_caps&) = default;
};

namespace detail {
template <class T>
inline void put(blob& b, std::size_t at, T v) noexcept {
    le<T> x(v);
    std::memcpy(b.data() + at, x.bytes.data(), sizeof(T));
}
template <class T>
inline T take(const std::uint8_t* b, std::size_t at) noexcept {
    le<T> x;
    std::memcpy(x.bytes.data(), b + at, sizeof(T));
    return x.get();
}
inline bool zero_from(const std::uint8_t* b, std::size_t from) noexcept {
    for (std::size_t i = from; i < 64; ++i)
        if (b[i] != 0) return false;
    return true;
}
} // namespace detail

/// Writes a pg_format entry for `c`.
inline virtio::pg_format encode_format(const format_caps& c) noexcept {
    virtio::pg_format f;
    f.model = c.model;
    blob b{};
    detail::put<std::uint32_t>(b, 0, c.variant);
    detail::put<std::uint32_t>(b, 4, c.sizes);
    b[8] = c.max_ias;
    b[9] = c.max_oas;
    b[10] = c.tag_bits;
    b[11] = c.flags;
    detail::put<std::uint64_t>(b, 12, c.pgsize_bitmap);
    std::memcpy(f.format, b.data(), 64);
    return f;
}

/// Reads a pg_format entry. Refuses model 0 (an unused slot), reserved bytes set.
inline checked<format_caps> decode_format(const virtio::pg_format& f) noexcept {
    format_caps c;
    c.model = f.model;
    if (c.model == 0) return refusal{virtio::status::inval, "model"};
    const std::uint8_t* b = f.format;
    c.variant = detail::take<std::uint32_t>(b, 0);
    c.sizes = detail::take<std::uint32_t>(b, 4);
    c.max_ias = b[8];
    c.max_oas = b[9];
    c.tag_bits = b[10];
    c.flags = b[11];
    c.pgsize_bitmap = detail::take<std::uint64_t>(b, 12);
    if (!detail::zero_from(b, 20)) return refusal{virtio::status::inval, "format.reserved"};
    return c;
}

/// A guest table's configuration as carried by ATTACH_TABLE: the variant, the register values
/// the format reads its configuration from, and the tag (ASID / domain id).
struct table_config {
    std::uint32_t model = 0, variant = 0;
    register_set regs;
    std::uint32_t tag = 0;
};

/// Builds the config blob. Registers the variant does not carry are ignored.
inline checked<blob> encode_config(const table_config& t) noexcept {
    blob b{};
    detail::put<std::uint32_t>(b, 0, t.variant);
    auto reg = [&](std::string_view n) { return t.regs.get(n).value_or(0); };
    if (t.model == model_arm && t.variant == arm_lpae64) {
        detail::put<std::uint64_t>(b, 8, reg("tcr"));
        detail::put<std::uint64_t>(b, 16, reg("mair"));
        detail::put<std::uint32_t>(b, 24, t.tag);
    } else if (t.model == model_arm && t.variant == arm_short) {
        detail::put<std::uint32_t>(b, 4, static_cast<std::uint32_t>(reg("tcr")));
        detail::put<std::uint32_t>(b, 8, static_cast<std::uint32_t>(reg("prrr")));
        detail::put<std::uint32_t>(b, 12, static_cast<std::uint32_t>(reg("nmrr")));
        detail::put<std::uint32_t>(b, 16, t.tag);
    } else if (t.model == model_x86 && t.variant == x86_vtd_first_stage) {
        detail::put<std::uint32_t>(b, 4, reg("flpm") ? 57u : 48u);
        detail::put<std::uint32_t>(b, 8, t.tag);
    } else {
        return refusal{virtio::status::unsupp, "config.variant"};
    }
    return b;
}

/// Reads a config blob for `model`. Refuses unknown variants (UNSUPP), reserved bytes set and
/// malformed fields (INVAL).
inline checked<table_config> decode_config(std::uint32_t model, const std::uint8_t* b) noexcept {
    table_config t;
    t.model = model;
    t.variant = detail::take<std::uint32_t>(b, 0);
    if (model == model_arm && t.variant == arm_lpae64) {
        if (detail::take<std::uint32_t>(b, 4) != 0 || !detail::zero_from(b, 28))
            return refusal{virtio::status::inval, "config.reserved"};
        t.regs.add("tcr", detail::take<std::uint64_t>(b, 8));
        t.regs.add("mair", detail::take<std::uint64_t>(b, 16));
        t.tag = detail::take<std::uint32_t>(b, 24);
    } else if (model == model_arm && t.variant == arm_short) {
        if (!detail::zero_from(b, 20)) return refusal{virtio::status::inval, "config.reserved"};
        t.regs.add("tcr", detail::take<std::uint32_t>(b, 4));
        t.regs.add("prrr", detail::take<std::uint32_t>(b, 8));
        t.regs.add("nmrr", detail::take<std::uint32_t>(b, 12));
        t.tag = detail::take<std::uint32_t>(b, 16);
    } else if (model == model_x86 && t.variant == x86_vtd_first_stage) {
        if (!detail::zero_from(b, 12)) return refusal{virtio::status::inval, "config.reserved"};
        const std::uint32_t aw = detail::take<std::uint32_t>(b, 4);
        if (aw != 48 && aw != 57) return refusal{virtio::status::inval, "config.address_width"};
        t.regs.add("flpm", aw == 57 ? 1 : 0);
        t.tag = detail::take<std::uint32_t>(b, 8);
    } else if (model != model_arm && model != model_x86) {
        return refusal{virtio::status::unsupp, "model"};
    } else {
        return refusal{virtio::status::unsupp, "config.variant"};
    }
    return t;
}

} // namespace iopgtable::sharing
