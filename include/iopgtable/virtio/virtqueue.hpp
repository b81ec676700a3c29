// SPDX-License-Identifier: MIT
#pragma once
/// @file virtqueue.hpp
/// Split virtqueues (virtio 1.x, "2.7 Split Virtqueues" of the OASIS virtio specification,
/// v1.2/1.3 numbering): the device side that a VMM runs over a ring the guest wrote, and the
/// driver side that a guest (or a test) runs to feed one.
///
/// Spec sections followed:
/// - 2.7 (layout: descriptor table align 16, available ring align 2, used ring align 4; queue
///   size a power of two, at most 32768);
/// - 2.7.4 message framing (a request may be split or merged over any descriptors; every
///   device-writable descriptor after every device-readable one);
/// - 2.7.5 descriptor table (the device never writes a device-readable buffer nor the table;
///   chains of at most Queue Size descriptors, 2^32 bytes), 2.7.5.3 indirect descriptors
///   (only with VIRTIO_F_INDIRECT_DESC; never nested; never with NEXT; WRITE ignored on the
///   descriptor pointing at the table; zero or more direct descriptors may precede it);
/// - 2.7.6 available ring, 2.7.8 used ring (`len` = bytes written, set before used idx);
/// - 2.7.7 used buffer and 2.7.10 available buffer notification suppression (NO_INTERRUPT /
///   NO_NOTIFY flags without VIRTIO_F_EVENT_IDX; used_event / avail_event with it, compared
///   with `need_event`, Linux's vring_need_event);
/// - 2.7.13 / 2.7.14 supplying and receiving buffers (barriers around the idx updates).
///
/// Memory: every ring field, descriptor and buffer is reached through a memory type M with
/// `contains(pa_t, len)`, `read(pa_t, void*, len)` and `write(pa_t, const void*, len)`
/// (`virtio::guest_view`, `guest_ram`); the numbers in pa_t are guest-physical addresses. All
/// guest data is untrusted: each access is bounds-checked by M, each descriptor range is
/// checked (with overflow) before use, every loop is bounded by the queue size. The three
/// ring parts are checked once, when a queue is built, where M hands out host runs
/// (`entries<std::uint8_t>`, as guest_ram and guest_view do): their fields are then copied
/// through host pointers at offsets inside the part (detail::ring_part).
///
/// Ordering: fields are copied with M's read/write. The barriers the spec asks for are
/// `std::atomic_thread_fence`s at the documented points (acquire after reading an idx,
/// release before publishing one, a full fence between publishing an idx and reading the
/// other side's suppression field), as Linux's virt_rmb / virt_wmb / virt_mb.
///
/// Concurrency: one thread per queue object (per side); the two sides may run concurrently
/// on shared memory.
#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "../core/address.hpp"
#include "../core/le.hpp"
#include "../mem/memory.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

// ---- wire structures (2.7.5, 2.7.6, 2.7.8) ----

/// One descriptor of a descriptor table or of an indirect table.
struct vring_desc {
    le64 addr;   ///< guest-physical address of the buffer (or of the indirect table)
    le32 len;    ///< buffer length in bytes (indirect: table length, 16 per descriptor)
    le16 flags;  ///< vring_desc_f_*
    le16 next;   ///< next descriptor of the chain when flags has NEXT
};
/// One used ring element: the chain's head and the bytes written into it.
struct vring_used_elem {
    le32 id;
    le32 len;
};

static_assert(sizeof(vring_desc) == 16 && alignof(vring_desc) == 1);
static_assert(offsetof(vring_desc, addr) == 0 && offsetof(vring_desc, len) == 8);
static_assert(offsetof(vring_desc, flags) == 12 && offsetof(vring_desc, next) == 14);
static_assert(sizeof(vring_used_elem) == 8 && offsetof(vring_used_elem, len) == 4);

inline constexpr std::uint16_t vring_desc_f_next = 1;
inline constexpr std::uint16_t vring_desc_f_write = 2;
inline constexpr std::uint16_t vring_desc_f_indirect = 4;
/// avail.flags bit 0: the driver wants no used buffer notification (ignored with EVENT_IDX).
inline constexpr std::uint16_t vring_avail_f_no_interrupt = 1;
/// used.flags bit 0: the device wants no available buffer notification (ignored with EVENT_IDX).
inline constexpr std::uint16_t vring_used_f_no_notify = 1;

/// The largest queue size (2.7).
inline constexpr std::uint32_t max_queue_size = 32768;

/// Linux's vring_need_event (2.7.7, 2.7.10): true when moving the index from `old_idx` to
/// `new_idx` (mod 2^16) passed `event`, i.e. event lies in [old_idx, new_idx).
constexpr bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old_idx) noexcept {
    return static_cast<std::uint16_t>(new_idx - event - 1) < static_cast<std::uint16_t>(new_idx - old_idx);
}

// ---- layout ----

/// Where the three parts of one split virtqueue lie in guest memory.
struct queue_layout {
    std::uint16_t size = 0;  ///< Queue Size: a power of two, 1..32768
    pa_t desc, avail, used;
};

/// Bytes of the available ring, with the trailing used_event when `event_idx`.
constexpr std::uint64_t avail_bytes(std::uint16_t size, bool event_idx) noexcept {
    return 4 + 2 * std::uint64_t{size} + (event_idx ? 2 : 0);
}
/// Bytes of the used ring, with the trailing avail_event when `event_idx`.
constexpr std::uint64_t used_bytes(std::uint16_t size, bool event_idx) noexcept {
    return 4 + 8 * std::uint64_t{size} + (event_idx ? 2 : 0);
}

/// The three parts packed one after the other from `base` (rounded up to 16), each at its
/// alignment. Without `event_idx` the event fields (which the spec's size table counts) are
/// never accessed and get no room. Precondition: the packed queue fits below 2^64.
constexpr queue_layout layout_at(pa_t base, std::uint16_t size, bool event_idx) noexcept {
    queue_layout q;
    q.size = size;
    q.desc = pa_t{(base.value + 15) & ~std::uint64_t{15}};
    q.avail = pa_t{q.desc.value + 16 * std::uint64_t{size}};
    q.used = pa_t{(q.avail.value + avail_bytes(size, event_idx) + 3) & ~std::uint64_t{3}};
    return q;
}

/// Bytes `layout_at` spans from a 16-aligned base to the end of the used ring.
constexpr std::uint64_t layout_bytes(std::uint16_t size, bool event_idx) noexcept {
    const queue_layout q = layout_at(pa_t{0}, size, event_idx);
    return q.used.value + used_bytes(size, event_idx);
}

/// The ring features that change the queue's behaviour (negotiated feature bits 28, 29).
struct queue_features {
    bool indirect = false;   ///< VIRTIO_F_INDIRECT_DESC
    bool event_idx = false;  ///< VIRTIO_F_EVENT_IDX

    /// The ring features out of a negotiated feature word.
    static constexpr queue_features from_bits(std::uint64_t negotiated) noexcept {
        return {((negotiated >> f_indirect_desc) & 1) != 0, ((negotiated >> f_event_idx) & 1) != 0};
    }
};

/// The memory a queue lives in: bounds-checked guest-physical reads and writes.
/// `contains` and `read` are const; each returns false (and copies nothing) for a range that
/// is not wholly inside the memory.
template <class M>
concept queue_memory = requires(M& m, const M& cm, pa_t gpa, std::uint64_t len, void* out, const void* in) {
    { cm.contains(gpa, len) } -> std::convertible_to<bool>;
    { cm.read(gpa, out, len) } -> std::convertible_to<bool>;
    { m.write(gpa, in, len) } -> std::convertible_to<bool>;
};

namespace detail {

/// [addr, addr + len) inside `mem`, without wrapping past 2^64.
template <class M>
bool range_in(const M& mem, std::uint64_t addr, std::uint64_t len) noexcept {
    return addr + len >= addr && mem.contains(pa_t{addr}, len);
}
template <class M>
bool load16(const M& mem, std::uint64_t at, std::uint16_t& out) noexcept {
    le16 v;
    if (!mem.read(pa_t{at}, v.bytes.data(), 2)) return false;
    out = v.get();
    return true;
}
template <class M>
bool store16(M& mem, std::uint64_t at, std::uint16_t value) noexcept {
    const le16 v{value};
    return mem.write(pa_t{at}, v.bytes.data(), 2);
}
constexpr bool disjoint(std::uint64_t a, std::uint64_t a_len, std::uint64_t b, std::uint64_t b_len) noexcept {
    return a + a_len <= b || b + b_len <= a;
}

/// One part of a queue (descriptor table, available ring, used ring): `bytes` from `at`.
/// When the memory hands out host runs (`entries<std::uint8_t>`, mem/memory.hpp) and the
/// whole part is one run, the part is bounds-checked once, here, and its fields are then
/// copied through the host pointer; otherwise every access goes through M's checked
/// read/write. Callers pass offsets inside the part (ring slots are masked by the queue size,
/// descriptor indexes checked against it), so neither way reaches outside it.
template <class M>
class ring_part {
public:
    ring_part() = default;
    ring_part(M& mem, std::uint64_t at, std::uint64_t bytes) noexcept : at_(at) {
        if constexpr (has_entry_runs<M, std::uint8_t>) {
            const entry_span<std::uint8_t> run = mem.template entries<std::uint8_t>(pa_t{at}, bytes, true);
            if (run.count == bytes) host_ = run.first;
        }
    }
    /// Precondition: [off, off + len) inside the part.
    bool read(const M& mem, std::uint64_t off, void* out, std::size_t len) const noexcept {
        if (host_ == nullptr) return mem.read(pa_t{at_ + off}, out, len);
        std::memcpy(out, host_ + off, len);
        return true;
    }
    bool write(M& mem, std::uint64_t off, const void* in, std::size_t len) const noexcept {
        if (host_ == nullptr) return mem.write(pa_t{at_ + off}, in, len);
        std::memcpy(host_ + off, in, len);
        return true;
    }
    bool load16(const M& mem, std::uint64_t off, std::uint16_t& out) const noexcept {
        le16 v;
        if (!read(mem, off, v.bytes.data(), 2)) return false;
        out = v.get();
        return true;
    }
    bool store16(M& mem, std::uint64_t off, std::uint16_t value) const noexcept {
        const le16 v{value};
        return write(mem, off, v.bytes.data(), 2);
    }

private:
    std::uint64_t at_ = 0;
    std::uint8_t* host_ = nullptr;
};

} // namespace detail

/// True when `q` is a usable queue in `mem`: size a power of two in 1..32768; parts aligned
/// (16, 2, 4); each part (with the event fields when `f.event_idx`) inside `mem` without
/// wrapping; no two parts overlapping (so the device's used-ring writes never touch what
/// the driver wrote).
template <queue_memory M>
bool valid_layout(const M& mem, const queue_layout& q, queue_features f) noexcept {
    if (q.size == 0 || (q.size & (q.size - 1)) != 0 || q.size > max_queue_size) return false;
    if (q.desc.value % 16 != 0 || q.avail.value % 2 != 0 || q.used.value % 4 != 0) return false;
    const std::uint64_t d = 16 * std::uint64_t{q.size}, a = avail_bytes(q.size, f.event_idx),
                        u = used_bytes(q.size, f.event_idx);
    if (!detail::range_in(mem, q.desc.value, d) || !detail::range_in(mem, q.avail.value, a) ||
        !detail::range_in(mem, q.used.value, u))
        return false;
    return detail::disjoint(q.desc.value, d, q.avail.value, a) && detail::disjoint(q.desc.value, d, q.used.value, u) &&
           detail::disjoint(q.avail.value, a, q.used.value, u);
}

// ---- chains as the device sees them ----

/// A guest-physical byte range.
struct segment {
    pa_t addr;
    std::uint32_t len = 0;
};

/// One descriptor chain taken off the available ring.
struct chain {
    std::uint16_t head = 0;             ///< index of the head descriptor (the used ring's id)
    std::vector<std::uint8_t> readable; ///< gathered copy of every device-readable byte, in order
    std::vector<segment> writable;      ///< the device-writable buffers, in order (none empty)
    std::uint64_t writable_len = 0;     ///< sum of `writable`'s lengths (at most 2^32 - 1)
};

/// Why a chain was refused. Every value but `none` leaves the chain's buffers empty.
enum class chain_error : std::uint8_t {
    none,
    head_out_of_range,        ///< avail ring entry ≥ queue size (the queue is broken)
    next_out_of_range,        ///< `next` ≥ queue size (direct) or ≥ table entries (indirect)
    loop_or_too_long,         ///< more data descriptors than the queue size (direct and indirect
                              ///< together), or more than the indirect table holds
    indirect_not_negotiated,  ///< INDIRECT without VIRTIO_F_INDIRECT_DESC
    indirect_nested,          ///< INDIRECT inside an indirect table
    indirect_bad_table,       ///< table length 0 or not a multiple of 16
    indirect_with_next,       ///< INDIRECT and NEXT together
    readable_after_writable,  ///< a device-readable descriptor after a device-writable one
    outside_memory,           ///< a buffer or table not inside guest memory (or wrapping 2^64)
    too_large,                ///< readable bytes over the queue's limit, or writable over 2^32 - 1
};

/// The enumerator's name ("none", "loop_or_too_long", ...).
constexpr std::string_view to_string(chain_error e) noexcept {
    switch (e) {
    case chain_error::none: return "none";
    case chain_error::head_out_of_range: return "head_out_of_range";
    case chain_error::next_out_of_range: return "next_out_of_range";
    case chain_error::loop_or_too_long: return "loop_or_too_long";
    case chain_error::indirect_not_negotiated: return "indirect_not_negotiated";
    case chain_error::indirect_nested: return "indirect_nested";
    case chain_error::indirect_bad_table: return "indirect_bad_table";
    case chain_error::indirect_with_next: return "indirect_with_next";
    case chain_error::readable_after_writable: return "readable_after_writable";
    case chain_error::outside_memory: return "outside_memory";
    case chain_error::too_large: return "too_large";
    }
    return "unknown";
}

/// Why a device queue stopped (virtio DEVICE_NEEDS_RESET).
enum class queue_fault : std::uint8_t {
    none,
    bad_layout,         ///< the layout failed `valid_layout` at construction
    avail_idx_jump,     ///< avail idx moved by more than the queue size
    head_out_of_range,  ///< an avail ring entry ≥ queue size
    ring_unreadable,    ///< a ring field could not be read or written (memory shrank?)
};

/// The enumerator's name.
constexpr std::string_view to_string(queue_fault f) noexcept {
    switch (f) {
    case queue_fault::none: return "none";
    case queue_fault::bad_layout: return "bad_layout";
    case queue_fault::avail_idx_jump: return "avail_idx_jump";
    case queue_fault::head_out_of_range: return "head_out_of_range";
    case queue_fault::ring_unreadable: return "ring_unreadable";
    }
    return "unknown";
}

// ---- the device side ----

/// A split virtqueue as the device (the VMM) runs it over a guest-written ring.
///
/// The device only reads the descriptor table and the available ring, and writes the used
/// ring, the writable buffers of chains it popped (through `write`) and nothing else.
template <queue_memory M>
class device_queue {
public:
    /// One chain taken off the available ring, well-formed (`error == none`) or not.
    struct popped {
        chain c;
        chain_error error = chain_error::none;
    };

    /// A queue over `mem` (which must outlive it and keep its bytes where they are) at `q`,
    /// with the negotiated ring features and a cap on the device-readable bytes of one chain
    /// (a chain over it is `too_large`).
    /// Starts at avail/used index 0, as after a queue reset. A layout failing `valid_layout`
    /// gives a queue that is `broken()` from the start (fault `bad_layout`).
    device_queue(M& mem, queue_layout q, queue_features f, std::uint32_t max_readable_bytes = 1u << 20) noexcept
        : mem_(&mem), q_(q), f_(f), max_readable_(max_readable_bytes) {
        if (!valid_layout(mem, q, f)) {
            fault_ = queue_fault::bad_layout;
            return;
        }
        desc_ = {mem, q.desc.value, 16 * std::uint64_t{q.size}};
        avail_ = {mem, q.avail.value, avail_bytes(q.size, f.event_idx)};
        used_ = {mem, q.used.value, used_bytes(q.size, f.event_idx)};
    }

    /// The next chain the driver made available, or nothing when there is none (or the queue
    /// is broken). Reads avail idx, then (acquire) the ring entry and the descriptors; copies
    /// every device-readable byte into `c.readable` and records the writable segments, so
    /// later guest writes to the table cannot change what was validated.
    ///
    /// A malformed chain comes back with `error != none`, empty buffers and its `head`, to be
    /// returned with `push_used(head, 0)`. An avail ring entry out of range comes back once as
    /// `head_out_of_range` (its `head` is the raw entry: do not push it) and breaks the queue;
    /// an avail idx more than the queue size ahead breaks it with nothing returned. Work per
    /// call is bounded by the queue size and `max_readable_bytes`. Throws only std::bad_alloc.
    std::optional<popped> pop() {
        popped p;
        if (!pop(p)) return std::nullopt;
        return p;
    }
    /// The same into `into` (true: a chain was taken; false: `into` is unspecified), reusing
    /// its buffers' capacity: a caller that keeps one `popped` allocates nothing per chain once
    /// its buffers have grown to the largest chain.
    bool pop(popped& into) {
        if (broken()) return false;
        std::uint16_t avail_idx = 0;
        if (!avail_.load16(*mem_, 2, avail_idx)) return fail(queue_fault::ring_unreadable);
        const auto pending = static_cast<std::uint16_t>(avail_idx - last_avail_);
        if (pending == 0) return false;
        if (pending > q_.size) return fail(queue_fault::avail_idx_jump);
        std::atomic_thread_fence(std::memory_order_acquire);  // ring entries after idx

        std::uint16_t head = 0;
        if (!avail_.load16(*mem_, 4 + 2 * std::uint64_t{slot(last_avail_)}, head))
            return fail(queue_fault::ring_unreadable);
        ++last_avail_;
        ++chains_;
        into.c.head = head;
        into.c.readable.clear();
        into.c.writable.clear();
        into.c.writable_len = 0;
        into.error = chain_error::none;
        if (head >= q_.size) {
            ++malformed_;
            fault_ = queue_fault::head_out_of_range;
            into.error = chain_error::head_out_of_range;
            return true;
        }
        into.error = walk(head, into.c);
        if (into.error != chain_error::none) {
            ++malformed_;
            into.c.readable.clear();
            into.c.writable.clear();
            into.c.writable_len = 0;
        }
        return true;
    }

    /// Scatter `bytes` into `c`'s writable segments starting `offset` bytes into them. False,
    /// and nothing written, when [offset, offset + size) is not inside the writable part (or a
    /// segment of a hand-made chain is outside memory). Writes nothing else.
    bool write(const chain& c, std::uint64_t offset, std::span<const std::uint8_t> bytes) {
        std::uint64_t total = 0;
        for (const segment& s : c.writable) {
            if (!detail::range_in(*mem_, s.addr.value, s.len)) return false;
            total += s.len;
        }
        if (offset > total || bytes.size() > total - offset) return false;
        std::uint64_t skip = offset;
        std::size_t done = 0;
        for (const segment& s : c.writable) {
            if (done == bytes.size()) break;
            if (skip >= s.len) {
                skip -= s.len;
                continue;
            }
            const std::uint64_t n = std::min<std::uint64_t>(s.len - skip, bytes.size() - done);
            mem_->write(pa_t{s.addr.value + skip}, bytes.data() + done, n);
            done += static_cast<std::size_t>(n);
            skip = 0;
        }
        return true;
    }

    /// Return chain `head` to the driver with `len` bytes written into its writable part:
    /// writes the used element, then (release) the used idx. Precondition: `head` came from
    /// `pop` with a head in range and was not pushed since, and at least `len` bytes of its
    /// writable part were written. Does nothing when the queue is broken or `head` ≥ size.
    void push_used(std::uint16_t head, std::uint32_t len) {
        if (broken() || head >= q_.size) return;
        vring_used_elem e;
        e.id = head;
        e.len = len;
        if (!used_.write(*mem_, 4 + 8 * std::uint64_t{slot(used_idx_)}, &e, sizeof e)) {
            fault_ = queue_fault::ring_unreadable;
            return;
        }
        std::atomic_thread_fence(std::memory_order_release);  // element before idx
        ++used_idx_;
        ++pushed_since_notify_;
        if (!used_.store16(*mem_, 2, used_idx_)) fault_ = queue_fault::ring_unreadable;
    }

    /// Whether the driver must get a used buffer notification for the elements pushed since
    /// the last call (false when none were): without EVENT_IDX unless avail.flags has
    /// NO_INTERRUPT; with EVENT_IDX when the used idx passed used_event (`need_event`), or
    /// after 2^16 or more pushes. Resets that tracking. With EVENT_IDX it also writes
    /// avail_event = the next avail idx `pop` reads, so the driver kicks only for new work;
    /// then a full fence: call `pop` once more before waiting for a kick, or a chain made
    /// available meanwhile may wait without one.
    bool needs_notify() {
        if (broken()) return false;
        std::atomic_thread_fence(std::memory_order_seq_cst);  // used idx before the driver's field
        const std::uint64_t pushed = pushed_since_notify_;
        const std::uint16_t old_idx = signalled_used_;
        pushed_since_notify_ = 0;
        signalled_used_ = used_idx_;
        bool notify = false;
        if (f_.event_idx) {
            std::uint16_t used_event = 0;
            if (!avail_.load16(*mem_, 4 + 2 * std::uint64_t{q_.size}, used_event)) {
                fault_ = queue_fault::ring_unreadable;
                return false;
            }
            notify = pushed >= 65536 || (pushed != 0 && need_event(used_event, used_idx_, old_idx));
            used_.store16(*mem_, 4 + 8 * std::uint64_t{q_.size}, last_avail_);
            std::atomic_thread_fence(std::memory_order_seq_cst);  // avail_event before re-reading avail idx
        } else if (pushed != 0) {
            std::uint16_t flags = 0;
            if (!avail_.load16(*mem_, 0, flags)) {
                fault_ = queue_fault::ring_unreadable;
                return false;
            }
            notify = (flags & vring_avail_f_no_interrupt) == 0;
        }
        return notify;
    }

    /// Without EVENT_IDX: set or clear used.flags NO_NOTIFY (advice to the driver not to
    /// kick). With EVENT_IDX the device must keep flags 0: does nothing.
    void set_no_notify(bool on) {
        if (broken() || f_.event_idx) return;
        used_.store16(*mem_, 0, on ? vring_used_f_no_notify : std::uint16_t{0});
    }

    /// The queue needs a reset (DEVICE_NEEDS_RESET): nothing is popped or pushed any more.
    bool broken() const noexcept { return fault_ != queue_fault::none; }
    /// Why the queue is broken (`none` while it is not).
    queue_fault fault() const noexcept { return fault_; }
    /// Chains popped (well-formed or not) and, of those, malformed ones.
    std::uint64_t chains() const noexcept { return chains_; }
    std::uint64_t malformed() const noexcept { return malformed_; }
    /// The next avail index `pop` reads, and the next used index `push_used` writes.
    std::uint16_t last_avail_idx() const noexcept { return last_avail_; }
    std::uint16_t used_idx() const noexcept { return used_idx_; }
    const queue_layout& layout() const noexcept { return q_; }
    queue_features features() const noexcept { return f_; }

private:
    bool fail(queue_fault why) noexcept {
        fault_ = why;
        return false;
    }
    std::uint16_t slot(std::uint16_t idx) const noexcept { return static_cast<std::uint16_t>(idx & (q_.size - 1)); }

    /// Follow the chain at `head` (in range), filling `c`.
    chain_error walk(std::uint16_t head, chain& c) {
        std::uint64_t table = q_.desc.value;
        std::uint32_t entries = q_.size;  // descriptors in the current table
        bool in_indirect = false;
        bool writable_seen = false;
        std::uint32_t count = 0;     // data descriptors so far: at most the queue size
        std::uint32_t in_table = 0;  // descriptors read from the indirect table
        std::uint32_t i = head;
        for (;;) {
            if (count >= q_.size || (in_indirect && in_table >= entries)) return chain_error::loop_or_too_long;
            if (in_indirect) ++in_table;
            vring_desc d;
            const bool got = in_indirect ? mem_->read(pa_t{table + 16 * std::uint64_t{i}}, &d, sizeof d)
                                         : desc_.read(*mem_, 16 * std::uint64_t{i}, &d, sizeof d);  // i < size
            if (!got) return chain_error::outside_memory;
            const std::uint16_t flags = d.flags;
            const std::uint64_t addr = d.addr;
            const std::uint32_t len = d.len;
            if ((flags & vring_desc_f_indirect) != 0) {
                if (!f_.indirect) return chain_error::indirect_not_negotiated;
                if (in_indirect) return chain_error::indirect_nested;
                if ((flags & vring_desc_f_next) != 0) return chain_error::indirect_with_next;
                if (len == 0 || len % sizeof(vring_desc) != 0) return chain_error::indirect_bad_table;
                if (!detail::range_in(*mem_, addr, len)) return chain_error::outside_memory;
                table = addr;
                entries = len / static_cast<std::uint32_t>(sizeof(vring_desc));
                in_indirect = true;
                i = 0;
                continue;
            }
            ++count;
            if ((flags & vring_desc_f_write) != 0) {
                writable_seen = true;
                if (len != 0) {
                    if (!detail::range_in(*mem_, addr, len)) return chain_error::outside_memory;
                    c.writable.push_back(segment{pa_t{addr}, len});
                    c.writable_len += len;
                    if (c.writable_len > std::numeric_limits<std::uint32_t>::max()) return chain_error::too_large;
                }
            } else {
                if (writable_seen) return chain_error::readable_after_writable;
                if (len != 0) {
                    if (!detail::range_in(*mem_, addr, len)) return chain_error::outside_memory;
                    const std::size_t have = c.readable.size();
                    if (len > max_readable_ || have > max_readable_ - len) return chain_error::too_large;
                    c.readable.resize(have + len);
                    if (!mem_->read(pa_t{addr}, c.readable.data() + have, len)) return chain_error::outside_memory;
                }
            }
            if ((flags & vring_desc_f_next) == 0) return chain_error::none;
            i = d.next;
            if (i >= entries) return chain_error::next_out_of_range;
        }
    }

    M* mem_;
    queue_layout q_;
    queue_features f_;
    detail::ring_part<M> desc_, avail_, used_;  ///< set when the layout is valid
    std::uint32_t max_readable_;
    queue_fault fault_ = queue_fault::none;
    std::uint16_t last_avail_ = 0;
    std::uint16_t used_idx_ = 0;
    std::uint16_t signalled_used_ = 0;
    std::uint64_t pushed_since_notify_ = 0;
    std::uint64_t chains_ = 0;
    std::uint64_t malformed_ = 0;
};

// ---- the driver side ----

/// A split virtqueue as a driver (the guest) runs it: a free list of descriptors, the
/// available ring it writes, the used ring it reads. Trusts nothing the device writes: a used
/// element naming a chain not in flight breaks the queue.
template <queue_memory M>
class driver_queue {
public:
    /// One buffer of a request: device-readable or device-writable.
    struct buffer {
        pa_t addr;
        std::uint32_t len = 0;
        bool writable = false;
    };
    /// A chain the device returned: its head and the bytes it wrote.
    struct used_elem {
        std::uint16_t id = 0;
        std::uint32_t len = 0;
    };

    /// A queue over `mem` (which must outlive it and keep its bytes where they are) at `q`
    /// with the negotiated ring features.
    /// Zero-fills the descriptor table and both rings (event fields included with EVENT_IDX).
    /// A layout failing `valid_layout` gives a `broken()` queue that adds nothing. Throws only
    /// std::bad_alloc.
    driver_queue(M& mem, queue_layout q, queue_features f)
        : mem_(&mem), q_(q), f_(f) {
        if (!valid_layout(mem, q, f)) {
            broken_ = true;
            return;
        }
        next_.resize(q.size);
        chain_len_.assign(q.size, 0);
        for (std::uint32_t i = 0; i < q.size; ++i) next_[i] = static_cast<std::uint16_t>(i + 1);
        num_free_ = q.size;
        const std::vector<std::uint8_t> zero(std::max(16 * std::uint64_t{q.size}, used_bytes(q.size, true)), 0);
        mem.write(q.desc, zero.data(), 16 * std::uint64_t{q.size});
        mem.write(q.avail, zero.data(), avail_bytes(q.size, f.event_idx));
        mem.write(q.used, zero.data(), used_bytes(q.size, f.event_idx));
        desc_ = {mem, q.desc.value, 16 * std::uint64_t{q.size}};
        avail_ = {mem, q.avail.value, avail_bytes(q.size, f.event_idx)};
        used_ = {mem, q.used.value, used_bytes(q.size, f.event_idx)};
    }

    /// Make one request available: `bufs` in order (every readable one before every writable
    /// one), in free descriptors chained with NEXT, or with `use_indirect` in a table the
    /// driver writes at `indirect_table` (16 bytes per buffer, inside memory) behind one
    /// INDIRECT descriptor. Writes the head into the available ring, then (release) avail
    /// idx. Returns the head, or nothing (and changes nothing) when `bufs` is empty, out of
    /// order, more than the free descriptors (direct) or the queue size (indirect), indirect
    /// was not negotiated, the table does not fit in memory, or the queue is broken.
    std::optional<std::uint16_t> add(std::span<const buffer> bufs, bool use_indirect = false, pa_t indirect_table = {}) {
        if (broken_ || bufs.empty() || num_free_ == 0) return std::nullopt;
        for (std::size_t k = 1; k < bufs.size(); ++k)
            if (bufs[k - 1].writable && !bufs[k].writable) return std::nullopt;
        const std::uint16_t head = free_head_;
        if (use_indirect) {
            if (!f_.indirect || bufs.size() > q_.size) return std::nullopt;
            const std::uint64_t table_bytes = 16 * std::uint64_t{bufs.size()};
            if (!detail::range_in(*mem_, indirect_table.value, table_bytes)) return std::nullopt;
            for (std::size_t k = 0; k < bufs.size(); ++k) {
                const bool last = k + 1 == bufs.size();
                const vring_desc d = make(bufs[k], last ? 0 : static_cast<std::uint16_t>(k + 1), !last);
                mem_->write(pa_t{indirect_table.value + 16 * k}, &d, sizeof d);
            }
            vring_desc d;
            d.addr = indirect_table.value;
            d.len = static_cast<std::uint32_t>(table_bytes);
            d.flags = vring_desc_f_indirect;
            desc_.write(*mem_, 16 * std::uint64_t{head}, &d, sizeof d);
            free_head_ = next_[head];
            num_free_ = static_cast<std::uint16_t>(num_free_ - 1);
            chain_len_[head] = 1;
        } else {
            if (bufs.size() > num_free_) return std::nullopt;
            std::uint16_t i = head;
            for (std::size_t k = 0; k < bufs.size(); ++k) {
                const bool last = k + 1 == bufs.size();
                const vring_desc d = make(bufs[k], last ? 0 : next_[i], !last);
                desc_.write(*mem_, 16 * std::uint64_t{i}, &d, sizeof d);
                i = next_[i];
            }
            free_head_ = i;
            num_free_ = static_cast<std::uint16_t>(num_free_ - bufs.size());
            chain_len_[head] = static_cast<std::uint16_t>(bufs.size());
        }
        avail_.store16(*mem_, 4 + 2 * std::uint64_t{slot(avail_idx_)}, head);
        std::atomic_thread_fence(std::memory_order_release);  // descriptors and ring entry before idx
        ++avail_idx_;
        ++added_since_kick_;
        avail_.store16(*mem_, 2, avail_idx_);
        return head;
    }

    /// The next chain the device returned, or nothing when there is none. Reads used idx,
    /// then (acquire) the element, and frees the chain's descriptors. A used idx more than the
    /// queue size ahead, or an id that is not a chain in flight, breaks the queue (nothing
    /// is returned from then on).
    std::optional<used_elem> get_used() {
        if (broken_) return std::nullopt;
        std::uint16_t used_idx = 0;
        if (!used_.load16(*mem_, 2, used_idx) || used_idx == last_used_) return std::nullopt;
        if (static_cast<std::uint16_t>(used_idx - last_used_) > q_.size) {
            broken_ = true;
            return std::nullopt;
        }
        std::atomic_thread_fence(std::memory_order_acquire);  // element after idx
        vring_used_elem e;
        used_.read(*mem_, 4 + 8 * std::uint64_t{slot(last_used_)}, &e, sizeof e);
        ++last_used_;
        const std::uint32_t id = e.id;
        if (id >= q_.size || chain_len_[id] == 0) {
            broken_ = true;
            return std::nullopt;
        }
        std::uint16_t last = static_cast<std::uint16_t>(id);
        for (std::uint16_t k = 1; k < chain_len_[id]; ++k) last = next_[last];
        next_[last] = free_head_;
        free_head_ = static_cast<std::uint16_t>(id);
        num_free_ = static_cast<std::uint16_t>(num_free_ + chain_len_[id]);
        chain_len_[id] = 0;
        return used_elem{static_cast<std::uint16_t>(id), e.len};
    }

    /// Without EVENT_IDX: set or clear avail.flags NO_INTERRUPT (advice to the device not to
    /// notify). With EVENT_IDX the driver must keep flags 0: does nothing.
    void set_no_interrupt(bool on) {
        if (broken_ || f_.event_idx) return;
        avail_.store16(*mem_, 0, on ? vring_avail_f_no_interrupt : std::uint16_t{0});
    }
    /// With EVENT_IDX: write used_event (notify me once used idx passes `event`). Does nothing
    /// without EVENT_IDX (the field has no room then).
    void set_used_event(std::uint16_t event) {
        if (broken_ || !f_.event_idx) return;
        avail_.store16(*mem_, 4 + 2 * std::uint64_t{q_.size}, event);
    }

    /// Whether the device must be notified of the chains added since the last call (false
    /// when none were): after a full fence, without EVENT_IDX unless used.flags has NO_NOTIFY;
    /// with EVENT_IDX when avail idx passed avail_event (`need_event`). Resets that tracking.
    bool should_kick() {
        if (broken_) return false;
        std::atomic_thread_fence(std::memory_order_seq_cst);  // avail idx before the device's field
        const std::uint64_t added = added_since_kick_;
        const std::uint16_t old_idx = kicked_idx_;
        added_since_kick_ = 0;
        kicked_idx_ = avail_idx_;
        if (added == 0) return false;
        std::uint16_t v = 0;
        if (f_.event_idx) {
            if (!used_.load16(*mem_, 4 + 8 * std::uint64_t{q_.size}, v)) return true;
            return added >= 65536 || need_event(v, avail_idx_, old_idx);
        }
        if (!used_.load16(*mem_, 0, v)) return true;
        return (v & vring_used_f_no_notify) == 0;
    }

    /// Descriptors not in any chain in flight.
    std::uint16_t free_descriptors() const noexcept { return num_free_; }
    /// The layout was invalid or the device returned something impossible.
    bool broken() const noexcept { return broken_; }
    /// The next avail index `add` writes.
    std::uint16_t avail_idx() const noexcept { return avail_idx_; }
    const queue_layout& layout() const noexcept { return q_; }

private:
    std::uint16_t slot(std::uint16_t idx) const noexcept { return static_cast<std::uint16_t>(idx & (q_.size - 1)); }
    static vring_desc make(const buffer& b, std::uint16_t next, bool has_next) noexcept {
        vring_desc d;
        d.addr = b.addr.value;
        d.len = b.len;
        d.flags = static_cast<std::uint16_t>((b.writable ? vring_desc_f_write : 0) | (has_next ? vring_desc_f_next : 0));
        d.next = next;
        return d;
    }

    M* mem_;
    queue_layout q_;
    queue_features f_;
    detail::ring_part<M> desc_, avail_, used_;  ///< set when the layout is valid
    bool broken_ = false;
    std::vector<std::uint16_t> next_;       // free-list and chain links (host side, trusted)
    std::vector<std::uint16_t> chain_len_;  // per head: descriptors of the chain in flight, 0 if none
    std::uint16_t free_head_ = 0;
    std::uint16_t num_free_ = 0;
    std::uint16_t avail_idx_ = 0;
    std::uint16_t last_used_ = 0;
    std::uint16_t kicked_idx_ = 0;
    std::uint64_t added_since_kick_ = 0;
};

} // namespace iopgtable::virtio
