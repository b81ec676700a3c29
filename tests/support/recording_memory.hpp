// SPDX-License-Identifier: MIT
#pragma once
/// @file recording_memory.hpp
/// One event log for both sides of a table's life: the flush hooks the engine calls and the
/// tables it allocates and frees (through a memory wrapper), so that tests can check order —
/// e.g. that walk_flush comes before the tables under it are freed.
#include <cstdint>
#include <vector>

#include <iopgtable/iopgtable.hpp>

namespace iopgtable::test {

enum class event_kind { leaf_removed, walk_flush, flush_all, table_allocated, table_freed };

struct event {
    event_kind kind;
    std::uint64_t a = 0;  ///< iova (hooks) or table address (memory)
    std::uint64_t b = 0;  ///< size (hooks) or table bytes (memory)
};

/// Records hook calls; `hooks()` gives the engine's flush_hooks.
struct event_log {
    std::vector<event> events;

    flush_hooks hooks() noexcept {
        flush_hooks h;
        h.cookie = this;
        h.leaf_removed = [](void* c, std::uint64_t iova, std::uint64_t size) {
            static_cast<event_log*>(c)->events.push_back({event_kind::leaf_removed, iova, size});
        };
        h.walk_flush = [](void* c, std::uint64_t iova, std::uint64_t size) {
            static_cast<event_log*>(c)->events.push_back({event_kind::walk_flush, iova, size});
        };
        h.flush_all = [](void* c) { static_cast<event_log*>(c)->events.push_back({event_kind::flush_all}); };
        return h;
    }
    std::size_t count(event_kind k) const {
        std::size_t n = 0;
        for (const auto& e : events) n += e.kind == k;
        return n;
    }
};

namespace detail {
template <class M>
struct software_walk_of {};
template <class M>
    requires requires { M::software_walk; }
struct software_walk_of<M> {
    static constexpr bool software_walk = M::software_walk;
};
} // namespace detail

/// Table memory M that logs every allocation and free into an event_log. Not thread-safe.
template <table_memory M>
class recording_memory : public detail::software_walk_of<M> {
public:
    recording_memory(M& inner, event_log& log) noexcept : inner_(inner), log_(log) {}

    result<pa_t> allocate_table(std::uint64_t bytes) {
        auto r = inner_.allocate_table(bytes);
        if (r) log_.events.push_back({event_kind::table_allocated, r->value, bytes});
        return r;
    }
    void free_table(pa_t pa, std::uint64_t bytes) noexcept {
        try {
            log_.events.push_back({event_kind::table_freed, pa.value, bytes});
        } catch (...) {
        }
        inner_.free_table(pa, bytes);
    }
    template <class W>
    W* entry(pa_t pa) noexcept {
        return inner_.template entry<W>(pa);
    }
    std::uint64_t bytes_in_use() const noexcept { return inner_.bytes_in_use(); }

private:
    M& inner_;
    event_log& log_;
};

} // namespace iopgtable::test
