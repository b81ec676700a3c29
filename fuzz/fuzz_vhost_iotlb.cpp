// SPDX-License-Identifier: MIT
/// @file fuzz_vhost_iotlb.cpp
/// libFuzzer target `fuzz_vhost_iotlb`: the vhost IOTLB service (virtio/vhost_iotlb.hpp) of a
/// virtio-iommu device in a simulated VM, over an in-memory stream whose backend side is the
/// input: raw bytes (garbage, truncated and unknown frames), well-formed MISSes of any
/// endpoint, permission and envelope, interleaved with the guest's requests (MAP, UNMAP,
/// ATTACH, DETACH, relaxed replacement), bypass changes, stage-2 changes, device resets and
/// the backend closing its end.
///
/// Checked after every step (a request completed, a poll returned):
/// - everything the service wrote is whole 72-byte frames, v1 or v2, of type UPDATE,
///   INVALIDATE or ACCESS_FAIL; an UPDATE or INVALIDATE has a size that does not wrap;
/// - the ordering contract: a backend model that applied every frame in order (UPDATE adds,
///   INVALIDATE removes) holds only translations the device still gives — for each range it
///   holds, its first, middle and last byte translate (peek_translation) with the range's
///   permission to the host-physical address whose VMM address the range says;
/// - the bounds: ranges per endpoint and in all, frames per poll; the model never holds more
///   ranges than the service remembers;
/// - a malformed frame (error reply, perm 0, or dropped) reaches neither the device (no
///   translation) nor the service's ranges; after the stream breaks or closes the service
///   remembers nothing and writes nothing.
///
/// Input, front to back (reads past the end give zero):
///
/// | bytes | meaning |
/// |---|---|
/// | 1 | bits 0–2 max ranges per endpoint − 1, bits 3–6 max ranges − 1, bit 7 RELAXED negotiated |
/// | 1 | bits 0–2 leaves per side, bits 3–5 frames per poll − 1, bits 6–7 stream capacity (frames: 4, 16, 64, 1024) |
/// | rest | steps: an opcode byte (mod 9) and its operands (the switch below) |
///
/// Cost per input: a machine reset (2 MiB of RAM cleared), as fuzz_device.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>

#include "fuzz_support.hpp"

namespace iopgtable::fuzz {
namespace {

using namespace iopgtable::virtio;
namespace vh = iopgtable::virtio::vhost;

constexpr std::uint64_t ram_size = machine<>::min_ram_size, page = 0x1000, iova_base = 0x100000;
constexpr std::uint64_t vmm_base = 0x7f0000000000;
constexpr std::uint32_t endpoints = 3;

std::optional<std::uint64_t> vmm_address(std::uint64_t base, std::uint64_t hpa, std::uint64_t size) {
    if (hpa < base || hpa - base >= ram_size || size > ram_size - (hpa - base)) return std::nullopt;
    return vmm_base + (hpa - base);
}

/// What a backend holds after applying every frame in order.
struct held {
    std::uint32_t asid;
    std::uint64_t first, last, uaddr;
    std::uint8_t perm;
    bool operator==(const held&) const = default;
};

} // namespace
} // namespace iopgtable::fuzz

using namespace iopgtable;
using namespace iopgtable::virtio;
using namespace iopgtable::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    byte_reader in(data, size);
    const std::uint8_t k0 = in.u8(), k1 = in.u8();
    machine_settings ms;
    ms.ram_size = ram_size;
    ms.stage2_pool = 256u << 10;
    ms.queue_size = 16;
    ms.event_buffers = 4;
    ms.device.endpoints = endpoints;
    ms.device.max_domains = 4;
    ms.device.max_mappings = 64;
    ms.device.max_table_bytes = 256u << 10;
    ms.device.iotlb_entries = 64;
    if (k0 & 0x80) ms.device.features |= feature(f_relaxed);
    machine<>& m = fuzz::reused_machine<machine<>>(ms);
    const std::uint64_t host_base = m.guest().hpa_base();

    vh::vhost_settings vs;
    vs.endpoints = {0, 1, 2};
    vs.v1_endpoint = 0;
    vs.max_ranges_per_endpoint = 1 + (k0 & 7);
    vs.max_ranges = 1 + ((k0 >> 3) & 15);
    vs.max_leaves = k1 & 7;
    vs.max_frames_per_poll = 1 + ((k1 >> 3) & 7);
    static constexpr std::size_t caps[] = {4, 16, 64, 1024};
    vh::memory_stream stream(caps[k1 >> 6] * vh::frame_size);
    using service = vh::vhost_iotlb_service<arm_host, vh::memory_stream>;
    service svc(m.dev(), stream,
                [host_base](std::uint64_t hpa, std::uint64_t len) { return vmm_address(host_base, hpa, len); }, vs);

    std::vector<held> model;
    std::vector<std::uint8_t> out(4);
    auto send = [&](const std::vector<std::uint8_t>& req) { (void)m.submit(req, out); };

    // Applies what the service wrote, checking every frame.
    auto drain = [&]() {
        const std::vector<std::uint8_t> b = stream.take();
        FUZZ_CHECK(b.size() % vh::frame_size == 0, "partial frame: %zu bytes", b.size());
        for (std::size_t at = 0; at < b.size(); at += vh::frame_size) {
            const vh::frame f = vh::decode(std::span<const std::uint8_t, vh::frame_size>(b.data() + at, vh::frame_size));
            FUZZ_CHECK(f.version == vh::msg_v1 || f.version == vh::msg_v2, "envelope %u", f.version);
            const vh::iotlb_msg& msg = f.msg;
            FUZZ_CHECK(msg.type == vh::iotlb_update || msg.type == vh::iotlb_invalidate || msg.type == vh::iotlb_access_fail,
                       "type %u", msg.type);
            if (msg.type == vh::iotlb_access_fail) continue;
            FUZZ_CHECK(msg.size != 0 && msg.iova + (msg.size - 1) >= msg.iova, "size %llx at %llx",
                       (unsigned long long)msg.size, (unsigned long long)msg.iova);
            const std::uint64_t last = msg.iova + (msg.size - 1);
            if (msg.type == vh::iotlb_invalidate) {
                std::erase_if(model, [&](const held& h) { return h.asid == f.asid && h.first <= last && msg.iova <= h.last; });
            } else {
                FUZZ_CHECK(msg.perm >= 1 && msg.perm <= 3, "update perm %u", msg.perm);
                const held h{f.asid, msg.iova, last, msg.uaddr, msg.perm};
                if (std::find(model.begin(), model.end(), h) == model.end()) model.push_back(h);
            }
        }
    };
    // The contract and the bounds.
    auto check = [&]() {
        drain();
        FUZZ_CHECK(svc.ranges() <= vs.max_ranges, "%zu ranges", svc.ranges());
        for (std::uint32_t ep = 0; ep < endpoints; ++ep)
            FUZZ_CHECK(svc.ranges_of(ep) <= vs.max_ranges_per_endpoint, "%zu ranges of %u", svc.ranges_of(ep), ep);
        if (svc.current() != service::state::open) {
            FUZZ_CHECK(svc.ranges() == 0, "a %s service remembers %zu ranges",
                       svc.current() == service::state::broken ? "broken" : "closed", svc.ranges());
            model.clear();  // the VMM stops such a backend: the contract is over
            return;
        }
        FUZZ_CHECK(model.size() <= svc.ranges(), "backend holds %zu, service remembers %zu", model.size(), svc.ranges());
        for (const held& h : model) {
            for (const std::uint64_t a : {h.first, h.first + (h.last - h.first) / 2, h.last}) {
                const space_walk w = m.dev().peek_translation(h.asid, a);
                FUZZ_CHECK(w.ok, "stale: endpoint %u iova %llx no longer translates", h.asid, (unsigned long long)a);
                const bool r_ok = !(h.perm & vh::access_ro) || nested::permits(w.perm, {nested::access_kind::read, false});
                const bool w_ok = !(h.perm & vh::access_wo) || nested::permits(w.perm, {nested::access_kind::write, false});
                FUZZ_CHECK(r_ok && w_ok, "stale: endpoint %u iova %llx lost perm %u", h.asid, (unsigned long long)a, h.perm);
                const auto u = vmm_address(host_base, w.hpa, 1);
                FUZZ_CHECK(u && *u == h.uaddr + (a - h.first), "stale: endpoint %u iova %llx now at %llx, held %llx",
                           h.asid, (unsigned long long)a, (unsigned long long)(u ? *u : 0),
                           (unsigned long long)(h.uaddr + (a - h.first)));
            }
        }
    };

    for (unsigned steps = 0; !in.empty() && steps < 256; ++steps) {
        const std::uint8_t op = in.u8() % 9;
        switch (op) {
        case 0: {  // MAP (the input's bytes drawn in this order: domain, start, pages, phys, flags)
            const std::uint32_t dom = 1 + in.u8() % 3;
            const std::uint64_t first = iova_base + (in.u8() % 32) * page, n = 1 + in.u8() % 4;
            const std::uint64_t phys = std::uint64_t{in.u8()} * 2 * page;  // up to 2 MiB: some beyond RAM's end
            const std::uint32_t flags = in.u8() & 3u;
            send(map_request(dom, first, first + n * page - 1, phys, flags).readable);
            break;
        }
        case 1: {  // UNMAP
            const std::uint32_t dom = 1 + in.u8() % 3;
            const std::uint64_t first = iova_base + (in.u8() % 32) * page, n = 1 + in.u8() % 8;
            send(unmap_request(dom, first, first + n * page - 1).readable);
            break;
        }
        case 2: {  // ATTACH (maybe a bypass domain) / DETACH
            const std::uint8_t b = in.u8();
            const std::uint32_t dom = 1 + (b >> 1) % 3, ep = (b >> 3) % endpoints;
            // A DETACH is sent laid out as the ATTACH it mirrors: with bit 7 set its reserved
            // bytes carry ATTACH_F_BYPASS, which the device must refuse.
            request q = attach_request(dom, ep, (b & 0x80) != 0);
            if (b & 1) q.readable[offsetof(req_attach, head)] = static_cast<std::uint8_t>(req_type::detach);
            send(q.readable);
            break;
        }
        case 3: {  // the bypass byte
            const std::uint8_t v = in.u8() % 3;
            (void)m.dev().write_config(offsetof(config, bypass), std::span(&v, 1));
            break;
        }
        case 4: m.dev().stage2_changed(std::uint64_t{in.u8()} * page, page); break;
        case 5: {  // raw bytes from the backend
            const std::size_t n = in.u8() % 160;
            std::vector<std::uint8_t> raw(n);
            for (auto& c : raw) c = in.u8();
            const auto translations = m.dev().dma_stats().translations;
            const auto errors = svc.stats().errors, dropped = svc.stats().dropped, misses = svc.stats().misses;
            const std::size_t ranges = svc.ranges();
            if (!stream.push(raw)) break;
            const std::size_t frames = svc.poll();
            FUZZ_CHECK(frames <= vs.max_frames_per_poll, "%zu frames in one poll", frames);
            if (svc.stats().misses == misses) {  // nothing well-formed: nothing reached the device
                FUZZ_CHECK(m.dev().dma_stats().translations == translations, "a malformed frame translated");
                FUZZ_CHECK(svc.ranges() == ranges || svc.current() != service::state::open, "a malformed frame changed ranges");
            }
            (void)errors, (void)dropped;
            break;
        }
        case 6: {  // a well-formed MISS (or one field off)
            const std::uint8_t b = in.u8();
            const std::uint32_t version = (b & 3) == 3 ? in.u8() : (b & 1) ? vh::msg_v1 : vh::msg_v2;
            vh::frame f{version, static_cast<std::uint32_t>((b >> 2) % (endpoints + 1)), {}};
            f.msg.iova = iova_base - 4 * page + std::uint64_t{in.u8()} * (page / 2);
            f.msg.perm = static_cast<std::uint8_t>((b >> 4) % 4);
            f.msg.type = (b & 0x40) ? vh::iotlb_miss : static_cast<std::uint8_t>(in.u8() % 8);
            // Whole frames an earlier push left unread (raw bytes beyond a poll's frame bound)
            // are answered first, so that this poll handles this one frame at most: before,
            // a poll here also answered those, and the checks below blamed this frame for them
            // (fuzz/regressions/fuzz_vhost_iotlb/miss-after-unread-frames). Each poll reads
            // at least one whole frame or returns 0: the loop ends.
            while (svc.poll() != 0) {
            }
            const auto translations = m.dev().dma_stats().translations;
            const std::size_t ranges = svc.ranges();
            const auto errors = svc.stats().errors + svc.stats().dropped;
            if (!stream.push(vh::encode(f))) break;
            FUZZ_CHECK(svc.poll() <= 1, "one frame");
            if (svc.stats().errors + svc.stats().dropped != errors) {
                FUZZ_CHECK(m.dev().dma_stats().translations == translations, "an error translated");
                FUZZ_CHECK(svc.ranges() == ranges || svc.current() != service::state::open, "an error changed ranges");
            }
            break;
        }
        case 7:
            if (in.u8() == 0x5a) m.dev().reset();  // the guest resets the device: all goes
            break;
        case 8:
            if (in.u8() == 0xa5) stream.close();  // the backend goes away
            break;
        }
        check();
    }
    return 0;
}
