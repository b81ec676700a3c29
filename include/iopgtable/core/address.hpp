// SPDX-License-Identifier: MIT
#pragma once
/// @file address.hpp
/// Strong address and size types. An address type is an integer with a tag: IOVAs, IPAs and
/// physical addresses never convert into each other implicitly, and only a length can be added
/// to an address. All operations are constexpr and noexcept.
#include <compare>
#include <cstdint>
#include <optional>

namespace iopgtable {

/// A byte count (a mapping size, a range length). Explicit construction only.
struct length_t {
    std::uint64_t value = 0;
    constexpr length_t() noexcept = default;
    constexpr explicit length_t(std::uint64_t v) noexcept : value(v) {}
    friend constexpr auto operator<=>(length_t, length_t) noexcept = default;
    friend constexpr length_t operator+(length_t a, length_t b) noexcept { return length_t{a.value + b.value}; }
    friend constexpr length_t operator-(length_t a, length_t b) noexcept { return length_t{a.value - b.value}; }
};

/// An address in one address space, selected by `Tag`.
template <class Tag>
struct address {
    std::uint64_t value = 0;
    constexpr address() noexcept = default;
    constexpr explicit address(std::uint64_t v) noexcept : value(v) {}
    friend constexpr auto operator<=>(address, address) noexcept = default;
    /// Wrapping addition; use `checked_add` where the sum may overflow.
    friend constexpr address operator+(address a, length_t n) noexcept { return address{a.value + n.value}; }
    friend constexpr address operator-(address a, length_t n) noexcept { return address{a.value - n.value}; }
    /// Distance between two addresses of the same space (`b <= a` is the caller's precondition).
    friend constexpr length_t operator-(address a, address b) noexcept { return length_t{a.value - b.value}; }
    /// `a + n`, or nothing when the sum does not fit in 64 bits.
    [[nodiscard]] constexpr std::optional<address> checked_add(length_t n) const noexcept {
        if (value + n.value < value) return std::nullopt;
        return address{value + n.value};
    }
};

struct iova_tag {};
struct ipa_tag {};
struct pa_tag {};

/// I/O virtual address: the input of a stage-1 or single-stage table.
using iova_t = address<iova_tag>;
/// Intermediate physical (guest-physical) address: the input of a stage-2 table and the output
/// of a stage-1 table under nesting.
using ipa_t = address<ipa_tag>;
/// Output (physical) address of a table, and the address of table memory.
using pa_t = address<pa_tag>;

namespace literals {
constexpr length_t operator""_B(unsigned long long v) noexcept { return length_t{v}; }
constexpr length_t operator""_KiB(unsigned long long v) noexcept { return length_t{v << 10}; }
constexpr length_t operator""_MiB(unsigned long long v) noexcept { return length_t{v << 20}; }
constexpr length_t operator""_GiB(unsigned long long v) noexcept { return length_t{v << 30}; }
constexpr length_t operator""_TiB(unsigned long long v) noexcept { return length_t{v << 40}; }
} // namespace literals

} // namespace iopgtable
