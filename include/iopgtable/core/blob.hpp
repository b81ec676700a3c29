// SPDX-License-Identifier: MIT
#pragma once
/// @file blob.hpp
/// The 64-byte descriptors of page-table sharing (PROBE_TABLE's `format`, ATTACH_TABLE's
/// `config`): little-endian fields at byte offsets, read and written without alignment.
/// Formats lay out their own config blob with these (formats/README.md).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "le.hpp"

namespace iopgtable {

using blob = std::array<std::uint8_t, 64>;

/// Writes `v` little-endian at byte `at` of `b`.
template <class T>
inline void blob_put(blob& b, std::size_t at, T v) noexcept {
    le<T> x(v);
    std::memcpy(b.data() + at, x.bytes.data(), sizeof(T));
}

/// Reads a little-endian T at byte `at` of the 64 bytes at `b`.
template <class T>
inline T blob_take(const std::uint8_t* b, std::size_t at) noexcept {
    le<T> x;
    std::memcpy(x.bytes.data(), b + at, sizeof(T));
    return x.get();
}

/// Whether bytes `from`..63 of the 64 bytes at `b` are all zero (reserved bytes).
inline bool blob_zero_from(const std::uint8_t* b, std::size_t from) noexcept {
    for (std::size_t i = from; i < 64; ++i)
        if (b[i] != 0) return false;
    return true;
}

} // namespace iopgtable
