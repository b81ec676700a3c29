// SPDX-License-Identifier: MIT
#pragma once
/// @file machine.hpp
/// A simulated VM around the device, for tests, tools, benchmarks and for trying the device as
/// a guest would: host memory, the guest's RAM slot, the VMM's stage 2, the device, and the
/// guest's side of both virtqueues (driver_queue) with a transport that sends a request as a
/// descriptor chain and runs the device on the kick.
///
/// Layout (guest-physical; `machine_settings` sizes it):
///
/// | GPA | what |
/// |---|---|
/// | 0x0010_0000 | requestq rings (queue size 256) |
/// | 0x0011_0000 | eventq rings |
/// | 0x0012_0000 | request buffers: readable 64 KiB, then writable 64 KiB, then an indirect table |
/// | 0x0015_0000 | event buffers, 24 bytes each (32 with PAGE_REQUESTS negotiated: a page request's size) |
/// | 0x0100_0000 | the guest's page-table window (16 MiB), for page-table sharing |
/// | 0x0200_0000 .. ram_size | free for the guest's DMA buffers |
///
/// RAM holds at least the fixed part below `min_ram_size` (2 MiB: both queues, the request
/// and event buffers); the table window and the DMA area are there when RAM reaches them.
///
/// sim/ holds the simulated machine and its hosts (hosts.hpp), apart from the device headers a
/// VMM embeds (virtio/); the types stay in namespace iopgtable::virtio.
///
/// Host memory: the guest slot at HPA `host_base`, then `stage2_pool` bytes for the VMM's
/// stage-2 tables (outside the slot: the guest cannot reach them).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <boost/hana/tuple.hpp>

#include "../nested/stage.hpp"
#include "../virtio/device.hpp"
#include "../virtio/guest_memory.hpp"
#include "../virtio/virtqueue.hpp"
#include "hosts.hpp"

namespace iopgtable::virtio {

struct machine_settings {
    std::uint64_t ram_size = 64ull << 20;     ///< guest RAM, GPA [0, ram_size)
    std::uint64_t host_base = 0x80000000;     ///< HPA of the guest's RAM
    std::uint64_t stage2_pool = 16ull << 20;  ///< host memory for stage-2 tables
    device_settings device{};
    std::uint64_t driver_features = ~std::uint64_t{0};  ///< the guest accepts what is offered and in here
    std::uint16_t queue_size = 256;
    std::uint32_t event_buffers = 64;  ///< posted on the eventq at start
};

template <class Host = arm_host>
class machine {
public:
    using device_type = device<Host>;
    using S2 = typename Host::stage2_format;
    using D = typename Host::domain_format;

    static constexpr std::uint64_t requestq_gpa = 0x100000, eventq_gpa = 0x110000, buffers_gpa = 0x120000,
                                   buffer_bytes = 0x10000, indirect_gpa = buffers_gpa + 2 * buffer_bytes,
                                   events_gpa = 0x150000, table_window_gpa = 0x1000000, table_window_size = 16ull << 20,
                                   dma_gpa = 0x2000000, min_ram_size = 0x200000;

    /// Builds the machine, negotiates features (what the device offers, masked by
    /// settings.driver_features) and sets up both queues. Refusals: the device's; INVAL when
    /// RAM is smaller than `min_ram_size` or stage 2 cannot map it.
    static checked<std::unique_ptr<machine>> create(machine_settings s = {}) {
        if (s.ram_size < min_ram_size || s.host_base + s.ram_size < s.host_base)
            return refusal{status::inval, "ram_size"};
        auto m = std::unique_ptr<machine>(new machine(s));
        if (auto why = m->build()) return *why;
        return m;
    }

    /// Back to the state `create(s)` gives, keeping the host memory's allocation: the guest's
    /// RAM is cleared and the device, both queues and the event buffers are built as `create`
    /// builds them; stage 2 and its pool are kept when nothing could have changed them since
    /// they were built (neither `host()` nor `stage2()` was called: the device and the guest
    /// only read stage 2 and reach host memory only through the guest's slot), and otherwise
    /// cleared and built again too. Either way a reset machine holds the same bytes, the same
    /// tables at the same addresses and the same state as a new one, so it answers alike. `s`
    /// may change the device settings, the driver's features, the queue size and the event
    /// buffers; a different ram_size, host_base or stage2_pool is refused (INVAL "host
    /// memory") and nothing changes. Otherwise `create`'s refusals, after which the machine
    /// holds no device until a reset succeeds. Cost: clearing ram_size bytes (keep RAM small
    /// where resets are frequent: fuzz_device runs 2 MiB) and building the device; no system
    /// call, no page fault once the memory has been touched (fuzz/README.md has the
    /// measurements that chose this over handing pages back to the kernel).
    std::optional<refusal> reset(const machine_settings& s) {
        if (s.ram_size != set_.ram_size || s.host_base != set_.host_base || s.stage2_pool != set_.stage2_pool)
            return refusal{status::inval, "host memory"};
        requestq_.reset();
        eventq_.reset();
        dev_.reset();  // before the stage 2 it walks
        const std::span<std::byte> all = host_.bytes();
        if (stage2_as_built_) {
            std::memset(all.data(), 0, s.ram_size);  // the slot: host memory from host_base on
        } else {
            s2_.reset();
            std::memset(all.data(), 0, all.size());
            host_.set_table_pool(pa_t{s.host_base + s.ram_size}, s.stage2_pool);
        }
        set_ = s;
        shape_ = {};
        event_at_.clear();
        faults_.clear();
        page_requests_.clear();
        return build();
    }

    device_type& dev() noexcept { return *dev_; }
    guest_view& guest() noexcept { return guest_; }
    /// Host memory and stage 2, to change them (the next `reset` then builds stage 2 again).
    guest_ram& host() noexcept {
        stage2_as_built_ = false;
        return host_;
    }
    page_table<S2, guest_ram>& stage2() noexcept {
        stage2_as_built_ = false;
        return *s2_;
    }
    /// The same, to look at.
    const guest_ram& host() const noexcept { return host_; }
    const page_table<S2, guest_ram>& stage2() const noexcept { return *s2_; }
    /// Stage 2 for walks, and for the guest's own tables built through it (which land in the
    /// guest's slot); changing host memory outside the slot is what `host()` is for.
    nested::stage_table<S2, guest_ram> stage2_table() const noexcept { return nested::stage_table<S2, guest_ram>::of(*s2_); }

    /// How `submit` lays a request out in descriptors: the readable and the writable part
    /// each cut into `pieces` descriptors (the last takes the rest; zero-length pieces when a
    /// part is shorter), or behind one INDIRECT descriptor.
    struct chain_shape {
        unsigned pieces = 1;
        bool indirect = false;
    };
    void set_shape(chain_shape s) noexcept { shape_ = s; }

    /// The guest sends one request: `in` as the device-readable part, `out.size()` bytes of
    /// device-writable space, one chain; kicks; the device answers; the guest reads the used
    /// element. Returns the used length (the bytes the device wrote are copied into `out`), or
    /// 0 when the request could not be sent or was returned unanswered.
    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        return raw(in, static_cast<std::uint32_t>(out.size()), out);
    }
    /// The same with a writable part of `writable_len` bytes (at most 64 KiB) and the reply
    /// copied into `reply` (its first min(used, reply.size()) bytes).
    ///
    /// The answer is the one used element the device publishes for this chain during this
    /// kick, and nothing else: used elements already waiting are taken off first (they answer
    /// chains the driver did not add in this call: a guest that wrote the available ring behind
    /// the driver's back makes the device use chains again, spec 2.7.6 / 2.7.13.3, and each
    /// gets its own used element, 2.7.8), and more than one element after the kick is no
    /// answer (0: which one is this chain's cannot be told, as `id` names only a head and
    /// heads are reused). A used element naming a chain not in flight breaks the driver's
    /// queue (driver_queue::get_used): from then on nothing is sent.
    std::uint32_t raw(std::span<const std::uint8_t> in, std::uint32_t writable_len, std::span<std::uint8_t> reply) {
        if (in.size() > buffer_bytes || writable_len > buffer_bytes) return 0;
        while (requestq_->get_used()) {
        }
        if (!guest_.write(pa_t{buffers_gpa}, in.data(), in.size())) return 0;
        static constexpr std::array<std::uint8_t, buffer_bytes> zero{};
        guest_.write(pa_t{buffers_gpa + buffer_bytes}, zero.data(), writable_len);
        bufs_.clear();  // reused: no allocation per request
        cut(bufs_, buffers_gpa, static_cast<std::uint32_t>(in.size()), false);
        cut(bufs_, buffers_gpa + buffer_bytes, writable_len, true);
        auto head = requestq_->add(bufs_, shape_.indirect, pa_t{indirect_gpa});
        if (!head) return 0;
        dev_->process_requests();
        (void)dev_->take_notify(0);
        auto used = requestq_->get_used();
        if (!used || used->id != *head || requestq_->get_used()) return 0;
        const std::uint32_t n = std::min<std::uint32_t>(used->len, static_cast<std::uint32_t>(reply.size()));
        guest_.read(pa_t{buffers_gpa + buffer_bytes}, reply.data(), n);
        return used->len;
    }

    /// The fault events the device wrote since the last call (re-posting their buffers).
    /// Page requests among them are kept for `take_page_requests`.
    std::vector<virtio::fault> take_events() {
        drain_events();
        std::vector<virtio::fault> out;
        out.swap(faults_);
        return out;
    }
    /// The page requests the device wrote since the last call (PAGE_REQUESTS), as the 32-byte
    /// events they are (the driver's `parse_page_request` reads them), oldest first; fault
    /// events among them are kept for `take_events`.
    std::vector<virtio::page_request_event> take_page_requests() {
        drain_events();
        std::vector<virtio::page_request_event> out;
        out.swap(page_requests_);
        return out;
    }

private:
    explicit machine(const machine_settings& s)
        : set_(s), host_(s.ram_size + s.stage2_pool, pa_t{s.host_base}), guest_(host_, 0, s.host_base, s.ram_size) {
        host_.set_table_pool(pa_t{s.host_base + s.ram_size}, s.stage2_pool);
    }

    /// Everything but the host memory, over a guest RAM that is all zero: stage 2 mapping the
    /// slot (unless it is there as built, over a pool that was empty and zero), the device,
    /// features, both queues, event buffers.
    std::optional<refusal> build() {
        if (!stage2_as_built_) {
            auto s2 = page_table<S2, guest_ram>::create(typename S2::config{}, host_);
            if (!s2) return refusal{status::inval, "stage 2"};
            s2_.emplace(std::move(*s2));
            if (!map_slot(*s2_, guest_)) return refusal{status::inval, "stage 2 slot"};
            stage2_as_built_ = true;
        }
        auto dev = device_type::create(host_, guest_, *s2_, typename D::config{}, set_.device);
        if (!dev) return dev.why();
        dev_ = std::move(*dev);
        if (!dev_->set_driver_features(dev_->device_features() & set_.driver_features))
            return refusal{status::inval, "features"};
        const queue_features qf = queue_features::from_bits(dev_->driver_features());
        const queue_layout rq = layout_at(pa_t{requestq_gpa}, set_.queue_size, qf.event_idx);
        const queue_layout eq = layout_at(pa_t{eventq_gpa}, set_.queue_size, qf.event_idx);
        requestq_.emplace(guest_, rq, qf);
        eventq_.emplace(guest_, eq, qf);
        if (!dev_->set_queue(0, rq) || !dev_->set_queue(1, eq)) return refusal{status::inval, "queues"};
        post_event_buffers(set_.event_buffers);
        return std::nullopt;
    }

    void cut(std::vector<typename driver_queue<guest_view>::buffer>& bufs, std::uint64_t at, std::uint32_t len, bool writable) const {
        const unsigned n = shape_.pieces == 0 ? 1 : shape_.pieces;
        if (len == 0) return;
        const std::uint32_t step = len / n;
        for (unsigned i = 0; i < n; ++i) {
            const std::uint32_t l = i + 1 == n ? len - step * (n - 1) : step;
            bufs.push_back({pa_t{at}, l, writable});
            at += l;
        }
    }
    void post_event_buffers(std::uint32_t n) {
        n = std::min<std::uint32_t>(n, set_.queue_size);
        event_at_.assign(set_.queue_size, 0);
        for (std::uint32_t i = 0; i < n; ++i) post_one(events_gpa + std::uint64_t{i} * event_bytes());
    }
    /// Each used event buffer read (a page request: 32 bytes, reason PAGE_REQUEST; else a fault)
    /// and posted again.
    void drain_events() {
        while (auto u = eventq_->get_used()) {
            if (u->id >= event_at_.size()) continue;
            const std::uint64_t at = event_at_[u->id];
            virtio::page_request_event pr;
            virtio::fault f;
            if (u->len == sizeof pr && guest_.read(pa_t{at}, static_cast<void*>(&pr), sizeof pr) &&
                pr.reason == fault_r_page_request) {
                page_requests_.push_back(pr);
            } else if (u->len >= sizeof f && guest_.read(pa_t{at}, static_cast<void*>(&f), sizeof f)) {
                faults_.push_back(f);
            }
            post_one(at);
        }
    }
    std::uint32_t event_bytes() const noexcept {
        return dev_ && dev_->negotiated(f_page_requests) ? sizeof(virtio::page_request_event) : sizeof(virtio::fault);
    }
    void post_one(std::uint64_t at) {
        const typename driver_queue<guest_view>::buffer b{pa_t{at}, event_bytes(), true};
        if (auto head = eventq_->add(std::span(&b, 1)); head && *head < event_at_.size()) event_at_[*head] = at;
    }

    machine_settings set_;
    guest_ram host_;
    guest_view guest_;
    std::optional<page_table<S2, guest_ram>> s2_;
    bool stage2_as_built_ = false;  ///< stage 2 and its pool untouched since build() made them
    std::unique_ptr<device_type> dev_;
    std::optional<driver_queue<guest_view>> requestq_, eventq_;
    chain_shape shape_{};
    std::vector<typename driver_queue<guest_view>::buffer> bufs_;  ///< `raw`'s descriptors (reused)
    std::vector<std::uint64_t> event_at_;  ///< GPA of the event buffer behind each head
    std::vector<virtio::fault> faults_;    ///< read off the eventq, not yet taken
    std::vector<virtio::page_request_event> page_requests_;
};

} // namespace iopgtable::virtio
