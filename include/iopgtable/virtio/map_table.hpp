// SPDX-License-Identifier: MIT
#pragma once
/// @file map_table.hpp
/// The address space of a MAP/UNMAP domain (virtio 1.3, 5.13.6.5 MAP and 5.13.6.6 UNMAP): a
/// real page table of format D (the host's IOMMU format) holding IOVA → guest-physical, so the
/// table could be handed to an IOMMU that nests it over the VMM's stage 2, plus the list of
/// mappings, because UNMAP works on whole mappings: a mapping is exactly the range one MAP
/// created, and UNMAP removes the mappings lying entirely inside its range, refusing (RANGE,
/// nothing removed) when it would split one.
///
/// Every operation checks first and changes second: a refused request leaves the table and
/// the list as they were. Table memory is a host_heap capped per domain (NOMEM beyond).
///
/// Relaxed mode (feature RELAXED, include/iopgtable/virtio/README.md "Fast protocol"):
/// `map_relaxed` replaces the overlapped parts of older mappings (they are trimmed or split;
/// an exact repeat changes nothing) through the engine's all-or-nothing `replace`, and
/// `unmap_relaxed` may split mappings and carve holes. `take` / `restore` let the device undo
/// a change (MAP_SG elements, grouped requests).
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <vector>

#include "../engine/page_table.hpp"
#include "../mem/host_heap.hpp"
#include "status.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

/// One MAP: [first, last] (inclusive) → phys, with the request's flags.
struct mapping {
    std::uint64_t first = 0, last = 0, phys = 0;
    std::uint32_t flags = 0;
    friend bool operator==(const mapping&, const mapping&) = default;
};

/// What a relaxed change did: `removed` bytes of old translation went from the table (the
/// IOTLB must forget the range), `exact` the MAP repeated an existing mapping (nothing done).
struct relaxed_outcome {
    std::uint64_t removed = 0;
    bool exact = false;
};

/// What a mapping's MAP flags become in the table: READ/WRITE as they are, MMIO as device
/// memory, otherwise coherent cacheable memory. prot::none when neither READ nor WRITE: such
/// a mapping is kept in the list (UNMAP removes it) but writes nothing in the table.
constexpr prot map_flags_to_prot(std::uint32_t flags) noexcept {
    prot p = prot::none;
    if (flags & map_f_read) p |= prot::read;
    if (flags & map_f_write) p |= prot::write;
    if (p == prot::none) return p;
    p |= (flags & map_f_mmio) ? prot::mmio : prot::cache;
    return p;
}

template <page_table_format D>
class map_table {
public:
    using table_type = page_table<D, host_heap>;

    /// An empty address space with at most `table_bytes` of table memory and `max_mappings`
    /// mappings. Errors: the configuration's; nomem when even the top table does not fit.
    static result<std::unique_ptr<map_table>> create(const typename D::config& cfg, std::uint64_t table_bytes,
                                                     std::uint64_t max_mappings) {
        auto m = std::unique_ptr<map_table>(new map_table(table_bytes, max_mappings));
        auto t = table_type::create(cfg, m->heap_);
        if (!t) return failure(t.error());
        m->table_.emplace(std::move(*t));
        return m;
    }

    /// MAP [first, last] → phys with `flags` (already checked against the device's features,
    /// granule and ranges by the caller). Refusals: an existing mapping overlaps (INVAL), the
    /// mapping cap (NOMEM), then the table's own (range beyond its input/output size RANGE,
    /// table memory NOMEM).
    virtio::status map(std::uint64_t first, std::uint64_t last, std::uint64_t phys, std::uint32_t flags) {
        if (overlaps(first, last)) return status::inval;
        if (maps_.size() >= max_mappings_) return status::nomem;
        const prot p = map_flags_to_prot(flags);
        if (p != prot::none) {
            const std::uint64_t len = last - first + 1;
            if (len == 0) return status::range;  // the whole 64-bit space: no table holds it
            auto r = table_->map(typename D::input_address{first}, pa_t{phys}, length_t{len}, p);
            if (!r) return r.error() == errc::exists ? status::inval : to_status(r.error());
        }
        if (!spare_.empty()) {  // a node UNMAP freed: no allocation
            auto node = std::move(spare_.back());
            spare_.pop_back();
            node.key() = first;
            node.mapped() = mapping{first, last, phys, flags};
            maps_.insert(std::move(node));
            return status::ok;
        }
        try {
            maps_.emplace(first, mapping{first, last, phys, flags});
        } catch (...) {
            if (p != prot::none) (void)table_->unmap(typename D::input_address{first}, length_t{last - first + 1});
            return status::nomem;
        }
        return status::ok;
    }

    /// UNMAP [first, last]: removes every mapping lying entirely inside; RANGE (nothing
    /// removed) when a mapping crosses either end. `removed` receives the ranges removed.
    virtio::status unmap(std::uint64_t first, std::uint64_t last, std::vector<mapping>* removed = nullptr) {
        auto it = maps_.upper_bound(first);
        if (it != maps_.begin() && std::prev(it)->second.last >= first) it = std::prev(it);
        auto begin = it;
        for (; it != maps_.end() && it->second.first <= last; ++it)
            if (it->second.first < first || it->second.last > last) return status::range;
        for (it = begin; it != maps_.end() && it->second.first <= last;) {
            const mapping m = it->second;
            if (map_flags_to_prot(m.flags) != prot::none) {
                // A whole mapping: its leaves lie inside it, so no table is split and nothing
                // is allocated; this cannot fail on a table we built.
                (void)table_->unmap(typename D::input_address{m.first}, length_t{m.last - m.first + 1});
            }
            if (removed) removed->push_back(m);
            it = release(it);
        }
        return status::ok;
    }

    /// Relaxed MAP [first, last] → phys: (1) nothing there: as `map`; (2) overlapping older
    /// mappings: their overlapped parts go (a mapping crossing an end keeps its outside part, as
    /// a mapping of its own), then the range is mapped; (3) the same range, phys and flags as an
    /// existing mapping: nothing changes (`exact`). All or nothing. Refusals: the mapping cap
    /// (counting the pieces a split leaves) NOMEM, the whole 64-bit space RANGE, then the
    /// table's (RANGE, NOMEM: a split or the new range needs tables).
    virtio::status map_relaxed(std::uint64_t first, std::uint64_t last, std::uint64_t phys, std::uint32_t flags,
                               relaxed_outcome& out) {
        out = {};
        if (auto it = maps_.find(first); it != maps_.end() && it->second == mapping{first, last, phys, flags}) {
            out.exact = true;
            return status::ok;
        }
        const std::uint64_t len = last - first + 1;
        if (len == 0) return status::range;
        const auto [b, e, n] = overlap_run(first, last);
        if (n == 1 && b->second.first == first && b->second.last == last) {
            // The same range, another phys or flags (a recycled IOVA): replaced in place.
            if (auto s = replace_run(b, e, first, last, phys, flags, out.removed); s != status::ok) return s;
            b->second.phys = phys;
            b->second.flags = flags;
            return status::ok;
        }
        std::map<std::uint64_t, mapping> fresh;
        try {
            add_pieces(b, e, n, first, last, fresh);
            fresh.emplace(first, mapping{first, last, phys, flags});
        } catch (...) {
            return status::nomem;
        }
        if (maps_.size() - n + fresh.size() > max_mappings_) return status::nomem;
        if (auto s = replace_run(b, e, first, last, phys, flags, out.removed); s != status::ok) return s;
        maps_.erase(b, e);
        maps_.merge(fresh);
        return status::ok;
    }

    /// Relaxed UNMAP [first, last]: every mapping part inside goes; a mapping crossing an end
    /// keeps its outside part (one containing the range becomes two). All or nothing.
    /// Refusals: the mapping cap NOMEM, the table's (NOMEM: splitting a block needs a table).
    virtio::status unmap_relaxed(std::uint64_t first, std::uint64_t last, relaxed_outcome& out) {
        out = {};
        const auto [b, e, n] = overlap_run(first, last);
        if (n == 0) return status::ok;
        std::map<std::uint64_t, mapping> fresh;
        try {
            add_pieces(b, e, n, first, last, fresh);
        } catch (...) {
            return status::nomem;
        }
        if (maps_.size() - n + fresh.size() > max_mappings_) return status::nomem;
        if (auto s = clear_run(b, e, first, last, out.removed); s != status::ok) return s;
        maps_.erase(b, e);
        maps_.merge(fresh);
        return status::ok;
    }

    /// What a change of [first, last] may touch: the mappings intersecting it, whole, and the
    /// span [lo, hi] they and the range cover.
    struct snapshot {
        std::uint64_t lo = 0, hi = 0;
        std::vector<mapping> maps;
    };
    snapshot take(std::uint64_t first, std::uint64_t last) const {
        snapshot s{first, last, {}};
        const auto [b, e, n] = overlap_run(first, last);
        s.maps.reserve(n);
        for (auto it = b; it != e; ++it) {
            s.maps.push_back(it->second);
            s.lo = std::min(s.lo, it->second.first);
            s.hi = std::max(s.hi, it->second.last);
        }
        return s;
    }
    /// Puts [s.lo, s.hi] back as it was when `s` was taken, after any number of changes inside
    /// [first, last] of `take` (undone in reverse order, so no mapping then crosses lo or hi).
    /// Needs no more table memory than the changes since freed; false when the table refused
    /// anyway (the space is then what could be restored).
    bool restore(const snapshot& s) {
        bool ok = true;
        auto [b, e, n] = overlap_run(s.lo, s.hi);
        for (auto it = b; it != e; ++it)
            if (it->second.first < s.lo || it->second.last > s.hi) return false;
        for (auto it = b; it != e;) {
            const mapping& m = it->second;
            if (map_flags_to_prot(m.flags) != prot::none)
                ok &= static_cast<bool>(table_->unmap(typename D::input_address{m.first}, length_t{m.last - m.first + 1}));
            it = maps_.erase(it);
        }
        for (const mapping& m : s.maps) {
            const prot p = map_flags_to_prot(m.flags);
            if (p != prot::none &&
                !table_->map(typename D::input_address{m.first}, pa_t{m.phys}, length_t{m.last - m.first + 1}, p)) {
                ok = false;
                continue;
            }
            try {
                maps_.emplace(m.first, m);
            } catch (...) {
                ok = false;
            }
        }
        return ok;
    }

    /// Whether any mapping intersects [first, last].
    bool overlaps(std::uint64_t first, std::uint64_t last) const noexcept {
        auto it = maps_.upper_bound(last);
        if (it == maps_.begin()) return false;
        return std::prev(it)->second.last >= first;
    }

    walk_info<D> lookup(std::uint64_t iova) const noexcept { return table_->lookup(typename D::input_address{iova}); }
    /// The translation alone (page_table::lookup_leaf): the DMA path's walk.
    leaf_translation lookup_leaf(std::uint64_t iova) const noexcept {
        return table_->lookup_leaf(typename D::input_address{iova});
    }
    std::size_t mapping_count() const noexcept { return maps_.size(); }
    const std::map<std::uint64_t, mapping>& mappings() const noexcept { return maps_; }
    const table_type& table() const noexcept { return *table_; }
    std::uint64_t table_bytes() const noexcept { return heap_.bytes_in_use(); }

private:
    using iterator = typename std::map<std::uint64_t, mapping>::iterator;
    using const_iterator = typename std::map<std::uint64_t, mapping>::const_iterator;
    struct run {
        iterator begin, end;
        std::size_t count;
    };
    struct const_run {
        const_iterator begin, end;
        std::size_t count;
    };
    /// The mappings intersecting [first, last], in order.
    run overlap_run(std::uint64_t first, std::uint64_t last) {
        auto it = maps_.upper_bound(first);
        if (it != maps_.begin() && std::prev(it)->second.last >= first) it = std::prev(it);
        auto e = it;
        std::size_t n = 0;
        for (; e != maps_.end() && e->second.first <= last; ++e) ++n;
        return {it, e, n};
    }
    const_run overlap_run(std::uint64_t first, std::uint64_t last) const {
        auto r = const_cast<map_table*>(this)->overlap_run(first, last);
        return {r.begin, r.end, r.count};
    }
    /// The outside parts of the run's first and last mappings, as mappings of their own.
    static void add_pieces(iterator b, iterator e, std::size_t n, std::uint64_t first, std::uint64_t last,
                           std::map<std::uint64_t, mapping>& into) {
        if (n == 0) return;
        const mapping& l = b->second;
        if (l.first < first) into.emplace(l.first, mapping{l.first, first - 1, l.phys, l.flags});
        const mapping& r = std::prev(e)->second;
        if (r.last > last) into.emplace(last + 1, mapping{last + 1, r.last, r.phys + (last + 1 - r.first), r.flags});
    }
    /// The table under [first, last] becomes the new mapping's: the engine's all-or-nothing
    /// replace, or, for a mapping without READ/WRITE, the run's translation removed.
    virtio::status replace_run(iterator b, iterator e, std::uint64_t first, std::uint64_t last, std::uint64_t phys,
                               std::uint32_t flags, std::uint64_t& removed) {
        const prot p = map_flags_to_prot(flags);
        if (p == prot::none) return clear_run(b, e, first, last, removed);
        auto r = table_->replace(typename D::input_address{first}, pa_t{phys}, length_t{last - first + 1}, p);
        if (!r) return to_status(r.error());
        removed = r->removed;
        return status::ok;
    }
    /// Unmaps the table under the run's part of [first, last] (one all-or-nothing unmap that
    /// splits leaves crossing the ends).
    virtio::status clear_run(iterator b, iterator e, std::uint64_t first, std::uint64_t last, std::uint64_t& removed) {
        bool any = false;
        for (auto it = b; it != e; ++it) any |= map_flags_to_prot(it->second.flags) != prot::none;
        if (!any) return status::ok;
        const std::uint64_t lo = std::max(first, b->second.first), hi = std::min(last, std::prev(e)->second.last);
        auto r = table_->unmap(typename D::input_address{lo}, length_t{hi - lo + 1}, unmap_mode::split);
        if (!r) return to_status(r.error());
        removed = r->value;
        return status::ok;
    }

    /// Erases `it`, keeping its node for the next `map` while there is room in `spare_`.
    iterator release(iterator it) noexcept {
        if (spare_.size() == spare_.capacity()) return maps_.erase(it);
        auto next = std::next(it);
        spare_.push_back(maps_.extract(it));  // within capacity: does not allocate
        return next;
    }

    map_table(std::uint64_t table_bytes, std::uint64_t max_mappings) : heap_(table_bytes), max_mappings_(max_mappings) {
        spare_.reserve(spare_nodes);
    }

    /// Map nodes kept for reuse: a strict MAP/UNMAP churn then allocates no node.
    static constexpr std::size_t spare_nodes = 16;

    host_heap heap_;
    std::optional<table_type> table_;
    std::map<std::uint64_t, mapping> maps_;  ///< by first address; disjoint
    std::vector<typename std::map<std::uint64_t, mapping>::node_type> spare_;  ///< freed nodes, at most spare_nodes
    std::uint64_t max_mappings_;
};

} // namespace iopgtable::virtio
