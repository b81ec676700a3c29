// SPDX-License-Identifier: MIT
#pragma once
/// @file status.hpp
/// The virtio-iommu status vocabulary, shared by the device, the driver and the page-table
/// sharing sub-protocol (sharing/): the request status of the virtio specification (5.13.6),
/// a refusal (the status to answer with and the field at fault), a value-or-refusal, and the
/// status an engine error becomes.
#include <cstdint>
#include <string_view>
#include <utility>
#include <variant>

#include "../core/result.hpp"

namespace iopgtable::virtio {

/// Request status (5.13.6.1 "Device Requirements: Device operations").
enum class status : std::uint8_t {
    ok = 0,
    ioerr = 1,
    unsupp = 2,
    deverr = 3,
    inval = 4,
    range = 5,
    noent = 6,
    fault = 7,
    nomem = 8,
};

/// Status names as `iopt virtio` prints them (OK, INVAL, ...).
constexpr std::string_view to_string(status s) noexcept {
    switch (s) {
    case status::ok: return "OK";
    case status::ioerr: return "IOERR";
    case status::unsupp: return "UNSUPP";
    case status::deverr: return "DEVERR";
    case status::inval: return "INVAL";
    case status::range: return "RANGE";
    case status::noent: return "NOENT";
    case status::fault: return "FAULT";
    case status::nomem: return "NOMEM";
    }
    return "UNKNOWN";
}

/// A refusal: the virtio status to answer with and the field at fault.
struct refusal {
    status code = status::inval;
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
constexpr status to_status(errc e) noexcept {
    switch (e) {
    case errc::invalid: return status::inval;
    case errc::range: return status::range;
    case errc::unsupported: return status::unsupp;
    case errc::nomem: return status::nomem;
    case errc::exists: return status::inval;
    case errc::partial: return status::range;
    case errc::fault: return status::fault;
    }
    return status::deverr;
}

} // namespace iopgtable::virtio
