// SPDX-License-Identifier: MIT
#pragma once
/// @file guest_memory.hpp
/// The guest's RAM as the VMM sees it: one memory slot, guest-physical [gpa, gpa + size) backed
/// by host-physical [hpa, hpa + size) of a host memory (`guest_ram` standing for host RAM,
/// bounds-checked). The virtqueues, the requests' buffers and (for single-stage walks) the
/// guest's tables are read through it; every access is checked against the slot, so nothing a
/// guest writes in a descriptor can reach host memory outside its RAM (the VMM's own stage-2
/// tables, say). Addresses are typed pa_t, as the walkers type table addresses; through this
/// view those numbers are GPAs.
///
/// A VMM's stage 2 maps the same slot (`map_slot` in device.hpp builds it), so the view and a
/// nested walk through stage 2 see the same bytes.
#include <cstdint>
#include <cstring>
#include <optional>

#include "../core/address.hpp"
#include "../mem/guest_ram.hpp"

namespace iopgtable::virtio {

class guest_view {
public:
    /// The slot GPA [gpa, gpa + size) at HPA [hpa, hpa + size) in `host`. A slot that does not
    /// lie inside `host` (or wraps) is empty: every access fails.
    guest_view(guest_ram& host, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t size) noexcept
        : host_(&host), gpa_(gpa), hpa_(hpa), size_(size) {
        if (gpa + size < gpa || hpa + size < hpa || !host.contains(pa_t{hpa}, size)) size_ = 0;
    }

    std::uint64_t gpa_base() const noexcept { return gpa_; }
    std::uint64_t hpa_base() const noexcept { return hpa_; }
    std::uint64_t size() const noexcept { return size_; }
    guest_ram& host() const noexcept { return *host_; }

    /// True when [gpa, gpa + len) lies inside the slot (len 0: gpa inside or at its end).
    bool contains(pa_t gpa, std::uint64_t len) const noexcept {
        if (gpa.value < gpa_) return false;
        const std::uint64_t off = gpa.value - gpa_;
        return off <= size_ && len <= size_ - off;
    }
    /// The host-physical address of `gpa`, or nothing outside the slot.
    std::optional<std::uint64_t> hpa_of(pa_t gpa) const noexcept {
        if (!contains(gpa, 1)) return std::nullopt;
        return hpa_ + (gpa.value - gpa_);
    }
    /// Copy guest bytes out / in; false (and nothing copied) when the range leaves the slot.
    bool read(pa_t gpa, void* out, std::uint64_t len) const noexcept {
        if (!contains(gpa, len)) return false;
        return host_->read(pa_t{hpa_ + (gpa.value - gpa_)}, out, len);
    }
    bool write(pa_t gpa, const void* in, std::uint64_t len) noexcept {
        if (!contains(gpa, len)) return false;
        return host_->write(pa_t{hpa_ + (gpa.value - gpa_)}, in, len);
    }
    /// Pointer to the W-sized, W-aligned word at `gpa`, or nullptr outside the slot (a
    /// `table_reader`: single-stage walks of a guest's table).
    template <class W>
    W* entry(pa_t gpa) noexcept {
        if (gpa.value % sizeof(W) != 0 || !contains(gpa, sizeof(W))) return nullptr;
        return host_->template entry<W>(pa_t{hpa_ + (gpa.value - gpa_)});
    }

    /// The words from `gpa` on, at most `n`, inside the slot (one bounds check for a run).
    template <class W>
    entry_span<W> entries(pa_t gpa, std::uint64_t n, bool /*write*/) noexcept {
        if (gpa.value % sizeof(W) != 0 || !contains(gpa, sizeof(W))) return {};
        const std::uint64_t room = (size_ - (gpa.value - gpa_)) / sizeof(W);
        return host_->template entries<W>(pa_t{hpa_ + (gpa.value - gpa_)}, n < room ? n : room, false);
    }

private:
    guest_ram* host_;
    std::uint64_t gpa_, hpa_, size_;
};

} // namespace iopgtable::virtio
