// SPDX-License-Identifier: MIT
#pragma once
/// @file result.hpp
/// Errors as values. `errc` names every way an operation can fail; `result<T>` holds a value
/// or an error (a small std::expected for C++20). No exceptions are thrown by the core.
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace iopgtable {

enum class errc : std::uint8_t {
    exists = 1,   ///< something is already mapped there (leaf, or a table holding a mapping)
    invalid,      ///< misaligned, zero size, no READ/WRITE, unknown flag, bad configuration
    range,        ///< outside the input or output address width
    nomem,        ///< table memory exhausted
    partial,      ///< an unmap would cut a leaf in two
    fault,        ///< a walk met an entry it cannot follow (bad table address, reserved encoding)
    unsupported,  ///< valid request this format or configuration does not implement
};

/// The error's name, as `iopt` prints it.
constexpr std::string_view to_string(errc e) noexcept {
    switch (e) {
    case errc::exists: return "exists";
    case errc::invalid: return "invalid";
    case errc::range: return "range";
    case errc::nomem: return "nomem";
    case errc::partial: return "partial";
    case errc::fault: return "fault";
    case errc::unsupported: return "unsupported";
    }
    return "unknown";
}

/// Wraps an error for constructing a failed result: `return failure(errc::range);`
struct failure {
    errc code;
    constexpr explicit failure(errc e) noexcept : code(e) {}
};

/// A value of type T, or an error.
template <class T>
class [[nodiscard]] result {
public:
    constexpr result(T v) noexcept(std::is_nothrow_move_constructible_v<T>) : v_(std::in_place_index<0>, std::move(v)) {}
    constexpr result(failure f) noexcept : v_(std::in_place_index<1>, f.code) {}
    constexpr bool ok() const noexcept { return v_.index() == 0; }
    constexpr explicit operator bool() const noexcept { return ok(); }
    /// Precondition: ok().
    constexpr T& value() & noexcept { return *std::get_if<0>(&v_); }
    constexpr const T& value() const& noexcept { return *std::get_if<0>(&v_); }
    constexpr T&& value() && noexcept { return std::move(*std::get_if<0>(&v_)); }
    constexpr T* operator->() noexcept { return std::get_if<0>(&v_); }
    constexpr const T* operator->() const noexcept { return std::get_if<0>(&v_); }
    constexpr T& operator*() & noexcept { return value(); }
    constexpr const T& operator*() const& noexcept { return value(); }
    /// Precondition: !ok().
    constexpr errc error() const noexcept { return *std::get_if<1>(&v_); }
    constexpr T value_or(T dflt) const { return ok() ? value() : dflt; }

private:
    std::variant<T, errc> v_;
};

/// Success without a value, or an error.
template <>
class [[nodiscard]] result<void> {
public:
    constexpr result() noexcept = default;
    constexpr result(failure f) noexcept : e_(f.code), failed_(true) {}
    constexpr bool ok() const noexcept { return !failed_; }
    constexpr explicit operator bool() const noexcept { return ok(); }
    constexpr errc error() const noexcept { return e_; }

private:
    errc e_{};
    bool failed_ = false;
};

inline constexpr result<void> success() noexcept { return {}; }

} // namespace iopgtable
