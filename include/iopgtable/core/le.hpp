// SPDX-License-Identifier: MIT
#pragma once
/// @file le.hpp
/// Little-endian integers stored as bytes: alignment 1, no padding, the same layout on every
/// host. Wire structures are built from these (never from packed C structs or host integers).
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace iopgtable {

template <class T>
struct le {
    static_assert(sizeof(T) <= 8);
    std::array<std::uint8_t, sizeof(T)> bytes{};

    constexpr le() noexcept = default;
    constexpr le(T v) noexcept { set(v); }  // NOLINT: implicit from the value on purpose
    /// On a little-endian host outside constant evaluation, one memcpy (a single load or
    /// store: GCC at -O2 does not fold the byte loop); otherwise byte by byte.
    constexpr T get() const noexcept {
        if constexpr (std::endian::native == std::endian::little) {
            if (!std::is_constant_evaluated()) {
                T v;
                std::memcpy(&v, bytes.data(), sizeof(T));
                return v;
            }
        }
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) v |= std::uint64_t{bytes[i]} << (8 * i);
        return static_cast<T>(v);
    }
    constexpr void set(T v) noexcept {
        if constexpr (std::endian::native == std::endian::little) {
            if (!std::is_constant_evaluated()) {
                std::memcpy(bytes.data(), &v, sizeof(T));
                return;
            }
        }
        for (std::size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<std::uint8_t>(std::uint64_t(v) >> (8 * i));
    }
    constexpr operator T() const noexcept { return get(); }  // NOLINT
    friend constexpr bool operator==(le a, le b) noexcept { return a.bytes == b.bytes; }
};

using le16 = le<std::uint16_t>;
using le32 = le<std::uint32_t>;
using le64 = le<std::uint64_t>;

static_assert(sizeof(le64) == 8 && alignof(le64) == 1);
static_assert(le32{0x11223344}.bytes[0] == 0x44);

} // namespace iopgtable
