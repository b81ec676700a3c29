// SPDX-License-Identifier: MIT
#pragma once
/// @file page_requests.hpp
/// The device's book of page requests (README.md "Page requests"): DMA accesses that missed in
/// a shared table attached with F_FAULT wait here, grouped by (endpoint, context, page), until
/// the guest replies (PAGE_REPLY), the request times out, or the endpoint leaves its domain.
///
/// This is bookkeeping only: the device (device.hpp) decides when to stall, posts the events,
/// retries the walks and reports completions. Every count is bounded by the caller's limits
/// (`page_request_limits`), checked by `can_open` / `can_join` before anything is added, and
/// room is reserved up front, so that closing requests never allocates.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "../nested/types.hpp"

namespace iopgtable::virtio {

/// The bounds a hostile guest cannot break (device_settings holds the values).
struct page_request_limits {
    std::uint32_t total = 64;         ///< page requests outstanding, all endpoints
    std::uint32_t per_endpoint = 16;  ///< page requests outstanding per endpoint
    std::uint32_t accesses = 256;     ///< DMA accesses waiting, all requests together
    std::uint64_t timeout_us = 100000;  ///< a request older than this fails its accesses
};

/// One DMA access waiting for a page: the VMM's token, and what to retry.
struct stalled_access {
    std::uint64_t token = 0;
    std::uint32_t endpoint = 0;
    std::uint64_t iova = 0;  ///< where it stopped
    std::uint64_t last = 0;  ///< the access's last byte (inclusive)
    nested::access_kind access = nested::access_kind::read;
};

/// One page request: what the event said and the accesses waiting for its reply (in the order
/// they stalled).
struct page_request {
    std::uint32_t id = 0;
    std::uint32_t endpoint = 0;
    std::uint32_t domain = 0;
    std::uint32_t context = 0;
    std::uint64_t page = 0;   ///< page-aligned address
    std::uint32_t flags = 0;  ///< fault_f_* of the first access
    std::uint64_t posted_us = 0;
    std::uint64_t table_seq = 0;  ///< the device's ATTACH_TABLE the walk missed in
    std::vector<stalled_access> waiting;
};

class page_request_book {
public:
    explicit page_request_book(page_request_limits l = {}) : lim_(l) {}

    const page_request_limits& limits() const noexcept { return lim_; }
    std::size_t size() const noexcept { return open_.size(); }
    std::size_t stalled() const noexcept { return stalled_; }
    const std::vector<page_request>& requests() const noexcept { return open_; }

    /// The open request of (endpoint, context, page), if any.
    page_request* find(std::uint32_t endpoint, std::uint32_t context, std::uint64_t page) noexcept {
        auto it = std::find_if(open_.begin(), open_.end(), [&](const page_request& r) {
            return r.endpoint == endpoint && r.context == context && r.page == page;
        });
        return it == open_.end() ? nullptr : &*it;
    }
    page_request* find_id(std::uint32_t id) noexcept {
        auto it = std::find_if(open_.begin(), open_.end(), [&](const page_request& r) { return r.id == id; });
        return it == open_.end() ? nullptr : &*it;
    }
    /// Whether one more access may wait.
    bool can_join() const noexcept { return stalled_ < lim_.accesses; }
    /// Whether `endpoint` may open one more request (and an access wait on it).
    bool can_open(std::uint32_t endpoint) const noexcept {
        if (!can_join() || open_.size() >= lim_.total) return false;
        const auto mine = std::count_if(open_.begin(), open_.end(), [&](const page_request& r) { return r.endpoint == endpoint; });
        return static_cast<std::uint64_t>(mine) < lim_.per_endpoint;
    }
    /// The id the next `open` takes: never 0, never one that is open.
    std::uint32_t next_id() const noexcept {
        std::uint32_t id = last_id_;
        do {
            id = id + 1 == 0 ? 1 : id + 1;
        } while (std::any_of(open_.begin(), open_.end(), [&](const page_request& r) { return r.id == id; }));
        return id;
    }
    /// Opens `r` (its id from `next_id`) with `a` waiting. Precondition: can_open(r.endpoint).
    /// False (nothing changed) when memory runs out.
    bool open(page_request r, const stalled_access& a) noexcept {
        try {
            open_.reserve(lim_.total);
            r.waiting.reserve(1);
            r.waiting.push_back(a);
            last_id_ = r.id;
            open_.push_back(std::move(r));
        } catch (...) {
            return false;
        }
        ++stalled_;
        return true;
    }
    /// Adds `a` to `r`'s waiting accesses. Precondition: can_join(). False when memory runs out.
    bool join(page_request& r, const stalled_access& a) noexcept {
        try {
            r.waiting.push_back(a);
        } catch (...) {
            return false;
        }
        ++stalled_;
        return true;
    }
    /// Takes out every request `pred` selects, in the order they were opened, and calls
    /// `done(request)` with each (its accesses are then no longer counted). `done` must not
    /// open or join requests. Allocates nothing.
    template <class Pred, class Done>
    void close_if(Pred pred, Done done) {
        for (std::size_t i = 0; i < open_.size();) {
            if (!pred(std::as_const(open_[i]))) {
                ++i;
                continue;
            }
            page_request r = std::move(open_[i]);
            open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(i));
            stalled_ -= r.waiting.size();
            done(r);
        }
    }
    /// Takes out request `id` (nothing if it is not open).
    std::optional<page_request> close(std::uint32_t id) noexcept {
        auto it = std::find_if(open_.begin(), open_.end(), [&](const page_request& r) { return r.id == id; });
        if (it == open_.end()) return std::nullopt;
        page_request r = std::move(*it);
        open_.erase(it);
        stalled_ -= r.waiting.size();
        return r;
    }
    /// Forgets everything (device reset, after the accesses were completed).
    void clear() noexcept {
        open_.clear();
        stalled_ = 0;
    }

private:
    page_request_limits lim_;
    std::vector<page_request> open_;
    std::size_t stalled_ = 0;
    std::uint32_t last_id_ = 0;
};

} // namespace iopgtable::virtio
