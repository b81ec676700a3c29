// SPDX-License-Identifier: MIT
#pragma once
/// @file invalidate.hpp
/// INVALIDATE (formats/README.md): a guest that shares its page table tells the device what it
/// changed or removed. Decoding checks the request against the attached table; the caller then
/// drops cached translations (IOTLB, walk caches, a folded shadow) for what it names.
#include <cstdint>

#include "../virtio/wire.hpp"
#include "descriptors.hpp"
#include "negotiation.hpp"

namespace iopgtable::sharing {

/// What an INVALIDATE asks for, checked.
struct invalidation {
    virtio::invalidate_kind kind = virtio::invalidate_kind::vaddr;
    std::uint32_t context = 0;
    std::uint64_t first = 0;  ///< vaddr only: first input address
    std::uint64_t last = 0;   ///< vaddr only: last input address (inclusive)
};

/// Decodes `req` for the table `binding` attached to its address space. Refusals: flag bits
/// outside the kind (INVAL), unknown kind (INVAL), TABLE without F_INDIRECT (INVAL), context
/// beyond the table's contexts (RANGE), VADDR with size 0 (INVAL), a range that wraps or leaves
/// the input address size (RANGE). `opaque` is architecture-specific hints; it is ignored.
template <class Binding>
checked<invalidation> decode_invalidate(const virtio::req_invalidate& req, const Binding& binding) {
    const std::uint32_t flags = req.flags;
    if ((flags & ~virtio::invalidate_kind_mask) != 0) return refusal{virtio::status::inval, "flags"};
    invalidation inv;
    const std::uint32_t kind = flags & virtio::invalidate_kind_mask;
    if (kind > static_cast<std::uint32_t>(virtio::invalidate_kind::table)) return refusal{virtio::status::inval, "flags.kind"};
    inv.kind = static_cast<virtio::invalidate_kind>(kind);
    inv.context = req.context;
    if (inv.kind == virtio::invalidate_kind::table) {
        if (!binding.indirect()) return refusal{virtio::status::inval, "flags.kind: TABLE without F_INDIRECT"};
        return inv;
    }
    if (inv.context >= binding.nr_contexts()) return refusal{virtio::status::range, "context"};
    if (inv.kind == virtio::invalidate_kind::single) return inv;
    const std::uint64_t start = req.virt_addr, size = req.range_size;
    if (size == 0) return refusal{virtio::status::inval, "range_size"};
    const std::uint64_t last = start + (size - 1);
    if (last < start) return refusal{virtio::status::range, "range: wraps"};
    if (!binding.geo().in_ias(last)) return refusal{virtio::status::range, "range: beyond the input address size"};
    inv.first = start;
    inv.last = last;
    return inv;
}

} // namespace iopgtable::sharing
