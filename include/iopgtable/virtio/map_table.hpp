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
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <vector>

#include "../engine/page_table.hpp"
#include "../mem/host_heap.hpp"
#include "../sharing/descriptors.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

/// One MAP: [first, last] (inclusive) → phys, with the request's flags.
struct mapping {
    std::uint64_t first = 0, last = 0, phys = 0;
    std::uint32_t flags = 0;
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
            if (!r) return r.error() == errc::exists ? status::inval : sharing::to_status(r.error());
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
            it = maps_.erase(it);
        }
        return status::ok;
    }

    /// Whether any mapping intersects [first, last].
    bool overlaps(std::uint64_t first, std::uint64_t last) const noexcept {
        auto it = maps_.upper_bound(last);
        if (it == maps_.begin()) return false;
        return std::prev(it)->second.last >= first;
    }

    walk_info<D> lookup(std::uint64_t iova) const noexcept { return table_->lookup(typename D::input_address{iova}); }
    std::size_t mapping_count() const noexcept { return maps_.size(); }
    const std::map<std::uint64_t, mapping>& mappings() const noexcept { return maps_; }
    const table_type& table() const noexcept { return *table_; }
    std::uint64_t table_bytes() const noexcept { return heap_.bytes_in_use(); }

private:
    map_table(std::uint64_t table_bytes, std::uint64_t max_mappings) : heap_(table_bytes), max_mappings_(max_mappings) {}

    host_heap heap_;
    std::optional<table_type> table_;
    std::map<std::uint64_t, mapping> maps_;  ///< by first address; disjoint
    std::uint64_t max_mappings_;
};

} // namespace iopgtable::virtio
