// SPDX-License-Identifier: MIT
#pragma once
/// @file vhost_iotlb.hpp
/// The vhost IOTLB service: translations of the virtio-iommu device (device.hpp) for a backend
/// that does not walk tables (vhost-net, vhost-user) but asks with IOTLB messages and caches
/// the answers, over any byte stream (README.md, "vhost IOTLB service").
///
/// - Wire: Linux's `struct vhost_msg` / `struct vhost_msg_v2` carrying a `struct
///   vhost_iotlb_msg` (<linux/vhost_types.h>): 72-byte frames, host byte order. The layout and
///   the constants below are facts of that header, checked against it by static_assert in
///   tests/virtio/vhost_iotlb.cpp.
/// - Binding: one service serves the endpoints the VMM grants it (`vhost_settings::endpoints`).
///   A v2 frame's `asid` names the endpoint; a v1 frame (no asid) means `v1_endpoint`.
/// - MISS (endpoint, iova, perm) → UPDATE for the largest range around iova that translates
///   contiguously (host-physical and the VMM's addresses) with that permission, or
///   ACCESS_FAIL after the fault event `translate` posts.
/// - Ordering contract: every change that takes translations away tells the service
///   (translation_observer) inside the request that makes it, and the service writes an
///   INVALIDATE for each range it handed out that the change may affect before returning, so
///   before that request completes. A backend that applied every message in order never uses
///   a translation the guest has removed.
/// - Bounds: ranges remembered per endpoint and in total (the oldest is evicted with an
///   INVALIDATE first), leaves one UPDATE may span, frames one `poll` handles, 72 bytes of a
///   partial frame; the stream's own bounds (memory_stream's capacity, socket_stream's write
///   timeout). A write the stream refuses breaks the service (see `vhost_iotlb_service`).
///
/// Not thread-safe, like the device: `poll` runs where the device's requests run. POSIX:
/// socket_stream uses socketpair/send/recv/poll (MSG_NOSIGNAL: Linux).
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "device.hpp"

namespace iopgtable::virtio::vhost {

// ---- wire: facts of <linux/vhost_types.h> (Linux UAPI), checked against it in the tests ----

/// `vhost_iotlb_msg.perm`: VHOST_ACCESS_RO / WO / RW.
inline constexpr std::uint8_t access_ro = 0x1, access_wo = 0x2, access_rw = 0x3;
/// `vhost_iotlb_msg.type`: VHOST_IOTLB_MISS, UPDATE, INVALIDATE, ACCESS_FAIL, BATCH_BEGIN, BATCH_END.
inline constexpr std::uint8_t iotlb_miss = 1, iotlb_update = 2, iotlb_invalidate = 3, iotlb_access_fail = 4,
                              iotlb_batch_begin = 5, iotlb_batch_end = 6;
/// `vhost_msg.type` / `vhost_msg_v2.type`: VHOST_IOTLB_MSG, VHOST_IOTLB_MSG_V2.
inline constexpr std::uint32_t msg_v1 = 0x1, msg_v2 = 0x2;

/// `struct vhost_iotlb_msg`: iova, size, uaddr (u64), perm, type (u8), padded to 32 bytes.
struct iotlb_msg {
    std::uint64_t iova = 0;
    std::uint64_t size = 0;
    std::uint64_t uaddr = 0;
    std::uint8_t perm = 0;
    std::uint8_t type = 0;
    friend bool operator==(const iotlb_msg&, const iotlb_msg&) = default;
};

/// One frame: `struct vhost_msg` (type as int, 4 bytes of alignment padding, the union of
/// vhost_iotlb_msg and 64 bytes) or `struct vhost_msg_v2` (u32 type, u32 asid, the same
/// union): 72 bytes either way, the message at offset 8.
inline constexpr std::size_t frame_size = 72;
inline constexpr std::size_t frame_type_at = 0, frame_asid_at = 4, frame_msg_at = 8;
inline constexpr std::size_t msg_iova_at = 0, msg_size_at = 8, msg_uaddr_at = 16, msg_perm_at = 24, msg_type_at = 25;
using frame_bytes = std::array<std::uint8_t, frame_size>;

/// A decoded frame. `version` msg_v1 or msg_v2 (another value: not a frame this service reads).
struct frame {
    std::uint32_t version = msg_v2;
    std::uint32_t asid = 0;  ///< v2 only (v1: the padding, written 0)
    iotlb_msg msg;
    friend bool operator==(const frame&, const frame&) = default;
};

inline frame_bytes encode(const frame& f) noexcept {
    frame_bytes b{};
    std::memcpy(b.data() + frame_type_at, &f.version, 4);
    if (f.version == msg_v2) std::memcpy(b.data() + frame_asid_at, &f.asid, 4);
    std::memcpy(b.data() + frame_msg_at + msg_iova_at, &f.msg.iova, 8);
    std::memcpy(b.data() + frame_msg_at + msg_size_at, &f.msg.size, 8);
    std::memcpy(b.data() + frame_msg_at + msg_uaddr_at, &f.msg.uaddr, 8);
    b[frame_msg_at + msg_perm_at] = f.msg.perm;
    b[frame_msg_at + msg_type_at] = f.msg.type;
    return b;
}
/// Any 72 bytes decode; the fields say whether they make sense.
inline frame decode(std::span<const std::uint8_t, frame_size> b) noexcept {
    frame f;
    std::memcpy(&f.version, b.data() + frame_type_at, 4);
    std::memcpy(&f.asid, b.data() + frame_asid_at, 4);
    if (f.version != msg_v2) f.asid = 0;
    std::memcpy(&f.msg.iova, b.data() + frame_msg_at + msg_iova_at, 8);
    std::memcpy(&f.msg.size, b.data() + frame_msg_at + msg_size_at, 8);
    std::memcpy(&f.msg.uaddr, b.data() + frame_msg_at + msg_uaddr_at, 8);
    f.msg.perm = b[frame_msg_at + msg_perm_at];
    f.msg.type = b[frame_msg_at + msg_type_at];
    return f;
}

// ---- byte streams ----

/// A byte stream the service reads frames from and writes frames to.
/// `write_all(bytes)`: all of them, in order, or false (the stream is unusable from then on).
/// `read_some(buf)`: without waiting, > 0 bytes read, 0 when none is there now, < 0 when the
/// stream is closed or failed.
template <class T>
concept byte_stream = requires(T& t, std::span<const std::uint8_t> out, std::span<std::uint8_t> in) {
    { t.write_all(out) } -> std::same_as<bool>;
    { t.read_some(in) } -> std::same_as<std::ptrdiff_t>;
};

/// An in-memory stream (iopt, fuzzing, tests): bytes the peer `push`es are read by the
/// service; bytes the service writes wait for the peer's `take`. Each direction holds at most
/// `capacity` bytes: a write that does not fit writes nothing and fails, as does a push.
class memory_stream {
public:
    explicit memory_stream(std::size_t capacity = 64 * 1024) : cap_(capacity) {}

    // The service's side.
    bool write_all(std::span<const std::uint8_t> b) {
        if (closed_ || b.size() > cap_ - out_.size()) return false;
        out_.insert(out_.end(), b.begin(), b.end());
        return true;
    }
    std::ptrdiff_t read_some(std::span<std::uint8_t> b) noexcept {
        const std::size_t n = std::min(b.size(), in_.size() - in_at_);
        if (n == 0) return closed_ && in_at_ == in_.size() ? -1 : 0;
        std::memcpy(b.data(), in_.data() + in_at_, n);
        in_at_ += n;
        if (in_at_ == in_.size()) in_.clear(), in_at_ = 0;
        return static_cast<std::ptrdiff_t>(n);
    }

    // The peer's side.
    bool push(std::span<const std::uint8_t> b) {
        if (closed_ || b.size() > cap_ - (in_.size() - in_at_)) return false;
        if (in_at_ != 0) {
            in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(in_at_));
            in_at_ = 0;
        }
        in_.insert(in_.end(), b.begin(), b.end());
        return true;
    }
    /// Everything the service wrote since the last take.
    std::vector<std::uint8_t> take() { return std::exchange(out_, {}); }
    /// The peer is gone: reads return < 0 once the pushed bytes are read; writes fail.
    void close() noexcept { closed_ = true; }
    std::size_t pending_out() const noexcept { return out_.size(); }

private:
    std::size_t cap_;
    std::vector<std::uint8_t> in_, out_;
    std::size_t in_at_ = 0;
    bool closed_ = false;
};

/// One end of a stream socket (AF_UNIX socketpair in the tests; any connected stream socket).
/// Reads never wait. A write waits for room at most `write_timeout_ms` in all, then fails:
/// a backend that stops reading cannot hold the device longer than that. Owns the fd.
class socket_stream {
public:
    explicit socket_stream(int fd, int write_timeout_ms = 1000) noexcept : fd_(fd), timeout_ms_(write_timeout_ms) {}
    socket_stream(socket_stream&& o) noexcept : fd_(std::exchange(o.fd_, -1)), timeout_ms_(o.timeout_ms_) {}
    socket_stream& operator=(socket_stream&& o) noexcept {
        if (this != &o) {
            close();
            fd_ = std::exchange(o.fd_, -1);
            timeout_ms_ = o.timeout_ms_;
        }
        return *this;
    }
    ~socket_stream() { close(); }

    /// Two connected ends (socketpair(AF_UNIX, SOCK_STREAM)), or nothing.
    static std::optional<std::pair<socket_stream, socket_stream>> make_pair(int write_timeout_ms = 1000) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return std::nullopt;
        return std::pair<socket_stream, socket_stream>(socket_stream(sv[0], write_timeout_ms),
                                                       socket_stream(sv[1], write_timeout_ms));
    }

    bool write_all(std::span<const std::uint8_t> b) noexcept {
        using clock = std::chrono::steady_clock;
        const auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms_);
        while (!b.empty()) {
            if (fd_ < 0) return false;
            const ssize_t n = ::send(fd_, b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                b = b.subspan(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count();
            if (left <= 0) return false;
            pollfd p{fd_, POLLOUT, 0};
            if (::poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) return false;
        }
        return true;
    }
    std::ptrdiff_t read_some(std::span<std::uint8_t> b) noexcept {
        if (fd_ < 0) return -1;
        if (b.empty()) return 0;
        for (;;) {
            const ssize_t n = ::recv(fd_, b.data(), b.size(), MSG_DONTWAIT);
            if (n > 0) return n;
            if (n == 0) return -1;  // the peer closed
            if (errno == EINTR) continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
    }
    int fd() const noexcept { return fd_; }
    void close() noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_ = -1;
    int timeout_ms_ = 1000;
};

// ---- the service ----

/// The VMM's address of host-physical [hpa, hpa + size), or nothing when that range is not
/// mapped contiguously in the VMM (the service then does not hand it out).
using uaddr_fn = std::function<std::optional<std::uint64_t>(std::uint64_t hpa, std::uint64_t size)>;

struct vhost_settings {
    /// The endpoints this backend may name: a v2 frame's asid must be one of them.
    std::vector<std::uint32_t> endpoints{0};
    /// The endpoint of v1 frames (which carry no asid); nothing: v1 frames are errors.
    std::optional<std::uint32_t> v1_endpoint = 0;
    std::size_t max_ranges_per_endpoint = 256;  ///< ranges remembered per endpoint
    std::size_t max_ranges = 4096;              ///< ranges remembered in all
    unsigned max_leaves = 512;                  ///< leaves one UPDATE may add on each side of the missed one
    std::size_t max_frames_per_poll = 64;       ///< frames one `poll` handles
};

struct vhost_stats {
    std::uint64_t misses = 0;         ///< well-formed MISS frames
    std::uint64_t updates = 0;        ///< UPDATE replies
    std::uint64_t access_fails = 0;   ///< ACCESS_FAIL replies for a fault (perm = the access)
    std::uint64_t errors = 0;         ///< ACCESS_FAIL replies with perm 0: a malformed frame
    std::uint64_t dropped = 0;        ///< frames of an unknown envelope type: no reply
    std::uint64_t invalidates = 0;    ///< INVALIDATE frames sent (evictions included)
    std::uint64_t evictions = 0;      ///< ranges forgotten to make room
    std::uint64_t repeats = 0;        ///< UPDATEs of a range already remembered (not recorded twice)
};

/// The service for one backend, bound to one device and one stream (both must outlive it).
/// It registers itself as the device's translation observer (one service per device) and
/// unregisters on destruction. Frames are answered in order by `poll`.
///
/// States: open; closed (the stream said so: everything remembered is forgotten, `poll` does
/// nothing); broken (a write failed: the contract cannot be kept for this backend any more,
/// so everything remembered is forgotten and nothing more is sent or answered — the VMM must
/// stop the backend, as it would on any error of its vhost channel).
template <class Host, byte_stream Stream>
class vhost_iotlb_service final : public translation_observer {
public:
    enum class state : std::uint8_t { open, closed, broken };

    vhost_iotlb_service(device<Host>& dev, Stream& stream, uaddr_fn uaddr, vhost_settings s = {})
        : dev_(dev), stream_(stream), uaddr_(std::move(uaddr)), set_(std::move(s)) {
        set_.max_ranges = std::max<std::size_t>(set_.max_ranges, 1);
        set_.max_ranges_per_endpoint = std::max<std::size_t>(set_.max_ranges_per_endpoint, 1);
        ranges_.reserve(set_.max_ranges);  // no allocation once running
        dev_.set_translation_observer(this);
    }
    vhost_iotlb_service(const vhost_iotlb_service&) = delete;
    vhost_iotlb_service& operator=(const vhost_iotlb_service&) = delete;
    ~vhost_iotlb_service() { dev_.set_translation_observer(nullptr); }

    /// Reads and answers up to `max_frames_per_poll` whole frames (a partial one waits, at most
    /// 72 bytes). Returns the frames handled.
    std::size_t poll() {
        std::size_t n = 0;
        while (state_ == state::open && n < set_.max_frames_per_poll) {
            const std::ptrdiff_t got = stream_.read_some(std::span(partial_).subspan(have_));
            if (got < 0) {
                end(state::closed);
                break;
            }
            if (got == 0) break;
            have_ += static_cast<std::size_t>(got);
            if (have_ < frame_size) continue;
            have_ = 0;
            ++n;
            handle(decode(partial_));
            if (state_ != state::open) ranges_.clear();
        }
        return n;
    }

    state current() const noexcept { return state_; }
    const vhost_stats& stats() const noexcept { return stats_; }
    /// Ranges handed out and not yet invalidated.
    std::size_t ranges() const noexcept { return ranges_.size(); }
    std::size_t ranges_of(std::uint32_t ep) const noexcept {
        return static_cast<std::size_t>(std::count_if(ranges_.begin(), ranges_.end(), [&](const held& h) { return h.ep == ep; }));
    }
    const vhost_settings& settings() const noexcept { return set_; }

    /// The device's observer: INVALIDATE every range handed out that `what` may affect, before
    /// returning (so before the request that made the change completes).
    void translations_gone(const translations_removed& what) noexcept override {
        using sc = translations_removed::scope;
        std::size_t keep = 0;
        for (std::size_t i = 0; i < ranges_.size(); ++i) {
            const held& h = ranges_[i];
            bool hit = false;
            switch (what.what) {
            case sc::all: hit = true; break;
            case sc::endpoint: hit = h.ep == what.id; break;
            case sc::domain: hit = h.domain && *h.domain == what.id; break;
            case sc::range: hit = h.domain && *h.domain == what.id && h.first <= what.last && what.first <= h.last; break;
            }
            if (hit && state_ == state::open) send_invalidate(h);
            if (!hit) {
                if (keep != i) ranges_[keep] = h;
                ++keep;
            }
        }
        ranges_.resize(keep);
        if (state_ != state::open) ranges_.clear();
    }

private:
    struct held {
        std::uint32_t ep = 0;
        std::optional<std::uint32_t> domain;  ///< the endpoint's domain when handed out (none: global bypass)
        std::uint64_t first = 0, last = 0, uaddr = 0;
        std::uint8_t perm = 0;
        std::uint32_t version = msg_v2;  ///< the envelope it was asked in, for its INVALIDATE
    };

    void end(state s) noexcept {
        state_ = s;
        ranges_.clear();
    }
    void send(const frame& f) noexcept {
        if (state_ != state::open) return;
        const frame_bytes b = encode(f);
        bool ok = false;
        try {
            ok = stream_.write_all(b);
        } catch (...) {
            ok = false;
        }
        if (!ok) state_ = state::broken;  // the caller forgets what it holds once done with it
    }
    void send_invalidate(const held& h) noexcept {
        ++stats_.invalidates;
        send(frame{h.version, h.ep, iotlb_msg{h.first, h.last - h.first + 1, h.uaddr, h.perm, iotlb_invalidate}});
    }
    void reply(const frame& in, iotlb_msg m) noexcept { send(frame{in.version, in.asid, m}); }
    void error(const frame& in) noexcept {
        ++stats_.errors;
        reply(in, iotlb_msg{in.msg.iova, 0, 0, 0, iotlb_access_fail});
    }

    void handle(const frame& f) {
        if (f.version != msg_v1 && f.version != msg_v2) {
            ++stats_.dropped;  // not a frame of ours: no envelope to answer in
            return;
        }
        std::optional<std::uint32_t> ep;
        if (f.version == msg_v1) ep = set_.v1_endpoint;
        else if (std::find(set_.endpoints.begin(), set_.endpoints.end(), f.asid) != set_.endpoints.end()) ep = f.asid;
        const std::uint8_t perm = f.msg.perm;
        if (f.msg.type != iotlb_miss || !ep || perm == 0 || perm > access_rw) return error(f);
        ++stats_.misses;
        miss(f, *ep, f.msg.iova, perm);
    }

    /// A MISS: `translate` the byte at iova for each access perm names (the device's own DMA
    /// path: a fault is posted as for any DMA); then widen leaf by leaf while the next leaf
    /// allows `perm` and continues both the host-physical and the VMM's addresses.
    void miss(const frame& f, std::uint32_t ep, std::uint64_t iova, std::uint8_t perm) {
        const iotlb_msg fail{iova, 0, 0, perm, iotlb_access_fail};
        for (const auto kind : {nested::access_kind::read, nested::access_kind::write}) {
            if ((perm & (kind == nested::access_kind::read ? access_ro : access_wo)) == 0) continue;
            // A stalled access (a table attached with F_FAULT, page requests) is not a
            // translation yet: ACCESS_FAIL now; the page request still goes to the guest, and
            // the backend's next MISS after the guest's reply gets the UPDATE.
            if (const auto r = dev_.translate(ep, iova, 1, kind); !r.ok() || r.stalled()) {
                ++stats_.access_fails;
                return reply(f, fail);
            }
        }
        const auto here = leaf_at(ep, iova, perm);
        if (!here) {  // translated, but not mapped in the VMM: nothing to hand out
            ++stats_.access_fails;
            return reply(f, fail);
        }
        leaf lo = *here, hi = *here;
        for (unsigned i = 0; i < set_.max_leaves && lo.first != 0; ++i) {
            const auto prev = leaf_at(ep, lo.first - 1, perm);
            if (!prev || prev->last != lo.first - 1 || prev->hpa + (prev->last - prev->first) + 1 != lo.hpa ||
                prev->uaddr + (prev->last - prev->first) + 1 != lo.uaddr)
                break;
            lo = *prev;
        }
        for (unsigned i = 0; i < set_.max_leaves && hi.last != ~std::uint64_t{0}; ++i) {
            const auto next = leaf_at(ep, hi.last + 1, perm);
            if (!next || next->first != hi.last + 1 || hi.hpa + (hi.last - hi.first) + 1 != next->hpa ||
                hi.uaddr + (hi.last - hi.first) + 1 != next->uaddr)
                break;
            hi = *next;
        }
        held h{ep, dev_.domain_of(ep), lo.first, hi.last, lo.uaddr, perm, f.version};
        if (h.last - h.first == ~std::uint64_t{0}) h.last -= 1;  // a size must fit in 64 bits
        remember(h);
        ++stats_.updates;
        reply(f, iotlb_msg{h.first, h.last - h.first + 1, h.uaddr, perm, iotlb_update});
    }

    struct leaf {
        std::uint64_t first, last, hpa, uaddr;
    };
    /// The leaf holding iova if it allows `perm` and the VMM maps its host-physical range.
    std::optional<leaf> leaf_at(std::uint32_t ep, std::uint64_t iova, std::uint8_t perm) {
        const space_walk w = dev_.peek_translation(ep, iova);
        if (!w.ok || w.size_lg2 < device_iotlb::page_lg2 || w.size_lg2 >= 64) return std::nullopt;
        const nested::access_request r{nested::access_kind::read, false}, wr{nested::access_kind::write, false};
        if ((perm & access_ro) && !nested::permits(w.perm, r)) return std::nullopt;
        if ((perm & access_wo) && !nested::permits(w.perm, wr)) return std::nullopt;
        const std::uint64_t mask = (std::uint64_t{1} << w.size_lg2) - 1;
        const std::uint64_t first = iova & ~mask, hpa = w.hpa - (iova & mask);
        const auto u = uaddr_(hpa, mask + 1);
        if (!u || *u + mask < *u) return std::nullopt;
        return leaf{first, first | mask, hpa, *u};
    }

    /// Records a range handed out; when full (per endpoint or in all), the oldest of the
    /// endpoint (or in all) is invalidated first, then forgotten.
    void remember(const held& h) {
        std::size_t of_ep = 0;  // one pass: a repeat, and how many the endpoint holds
        for (const held& o : ranges_) {
            if (o.ep != h.ep) continue;
            ++of_ep;
            if (o.first == h.first && o.last == h.last && o.uaddr == h.uaddr && o.perm == h.perm &&
                o.version == h.version && o.domain == h.domain) {
                ++stats_.repeats;
                return;
            }
        }
        const bool ep_full = of_ep >= set_.max_ranges_per_endpoint;
        if (ep_full || ranges_.size() >= set_.max_ranges) {
            auto victim = ranges_.begin();  // oldest first: ranges_ is in hand-out order
            if (ep_full) victim = std::find_if(ranges_.begin(), ranges_.end(), [&](const held& o) { return o.ep == h.ep; });
            ++stats_.evictions;
            send_invalidate(*victim);
            ranges_.erase(victim);
        }
        if (state_ == state::open) ranges_.push_back(h);  // capacity reserved: no allocation
        else ranges_.clear();
    }

    device<Host>& dev_;
    Stream& stream_;
    uaddr_fn uaddr_;
    vhost_settings set_;
    state state_ = state::open;
    std::vector<held> ranges_;  ///< in hand-out order
    frame_bytes partial_{};
    std::size_t have_ = 0;
    vhost_stats stats_;
};

// ---- a backend's side (tests, bench, examples) ----

/// What a backend keeps: the UPDATEs it was sent, minus the INVALIDATEs, at most `capacity`
/// ranges (the oldest forgotten first). `apply` takes every frame in order.
class backend_cache {
public:
    explicit backend_cache(std::size_t capacity = 256) : cap_(std::max<std::size_t>(capacity, 1)) {}

    void apply(const frame& f) {
        const iotlb_msg& m = f.msg;
        if (m.size == 0) return;
        const std::uint64_t last = m.iova + (m.size - 1);
        if (m.type == iotlb_invalidate) {
            std::erase_if(entries_, [&](const entry& e) {
                return e.asid == f.asid && e.first <= last && m.iova <= e.last;
            });
        } else if (m.type == iotlb_update) {
            if (entries_.size() >= cap_) entries_.erase(entries_.begin());
            entries_.push_back(entry{f.asid, m.iova, last, m.uaddr, m.perm});
        }
    }
    /// The VMM address of iova for an access needing `perm`, or nothing (a MISS is due).
    std::optional<std::uint64_t> lookup(std::uint32_t asid, std::uint64_t iova, std::uint8_t perm) {
        for (auto it = entries_.rbegin(); it != entries_.rend(); ++it)
            if (it->asid == asid && it->first <= iova && iova <= it->last && (it->perm & perm) == perm) {
                ++hits_;
                return it->uaddr + (iova - it->first);
            }
        ++misses_;
        return std::nullopt;
    }
    std::size_t size() const noexcept { return entries_.size(); }
    std::uint64_t hits() const noexcept { return hits_; }
    std::uint64_t misses() const noexcept { return misses_; }

private:
    struct entry {
        std::uint32_t asid;
        std::uint64_t first, last, uaddr;
        std::uint8_t perm;
    };
    std::size_t cap_;
    std::vector<entry> entries_;
    std::uint64_t hits_ = 0, misses_ = 0;
};

} // namespace iopgtable::virtio::vhost
