// SPDX-License-Identifier: MIT
/// @file fuzz_device.cpp
/// The virtio-iommu device under a hostile guest: arbitrary bytes as request bodies (through
/// the real requestq, in chains of any shape), as raw descriptor tables and available rings
/// written behind the driver's back, as guest memory (the guest's own page tables included),
/// mixed with well-formed requests so that the fuzzer reaches domains, mappings and shared
/// tables, and DMA translations in between.
///
/// What must hold: no crash, no read or write outside guest RAM (ASan; guest RAM is a slot of a
/// larger host memory whose other part holds the VMM's stage-2 tables), every loop bounded
/// (libFuzzer's timeout), a used length never above the writable space, a request answered
/// with a tail carrying a known status, translations only for endpoints in a domain or in
/// bypass, output ranges inside the slot's host memory, and the device still answering a
/// well-formed request at the end.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/virtio/machine.hpp>

#include "fuzz_support.hpp"

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

/// Guest RAM: the machine's fixed layout (queues, request and event buffers) and room for the
/// guest's tables and DMA targets; stage 2 maps it with one 2 MiB block.
constexpr std::uint64_t ram_size = machine<>::min_ram_size, stage2_pool = 256u << 10;

/// One request through the requestq. The used length is that of the element the device
/// published for this chain (machine::raw ignores elements left by chains an input made
/// available by hand), so it is at most the chain's writable space (virtio 1.3 2.7.8).
std::uint32_t send(machine<>& m, const std::vector<std::uint8_t>& in, std::uint32_t wlen, std::vector<std::uint8_t>& out) {
    out.assign(wlen, 0xee);
    const std::uint32_t used = m.raw(in, wlen, out);
    FUZZ_CHECK(used <= wlen, "used %u > writable %u", used, wlen);
    return used;
}

/// The machine for this input: built by the first input, then reset to exactly what
/// `create(ms)` would build (machine::reset keeps the host memory's allocation and clears it,
/// so an input pays for clearing 2 MiB of RAM, not for a new machine; fuzz/README.md).
machine<>& machine_for(const machine_settings& ms) {
    static std::unique_ptr<machine<>> m;
    if (!m) {
        auto mc = machine<>::create(ms);
        FUZZ_CHECK(mc.ok(), "machine: %s", mc.ok() ? "" : mc.why().field.data());
        m = std::move(*mc);
    } else {
        const auto why = m->reset(ms);
        FUZZ_CHECK(!why, "machine reset: %s", why ? why->field.data() : "");
    }
    return *m;
}

void check_tail(const std::vector<std::uint8_t>& out, std::uint32_t used) {
    if (used == 0) return;
    FUZZ_CHECK(used >= 4, "used %u: no room for a tail", used);
    const std::uint8_t s = out[used - 4];
    FUZZ_CHECK(s <= static_cast<std::uint8_t>(status::nomem), "status %u", s);
    FUZZ_CHECK(out[used - 3] == 0 && out[used - 2] == 0 && out[used - 1] == 0, "tail reserved not zero");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::byte_reader in(data, size);
    machine_settings ms;
    ms.ram_size = ram_size;
    ms.stage2_pool = stage2_pool;
    ms.queue_size = 16;
    ms.event_buffers = in.u8() & 7;
    const std::uint8_t knobs = in.u8();
    ms.device.sharing = (knobs & 1) ? shared_mode::folded : shared_mode::nested;
    ms.device.page_size_mask = (knobs & 2) ? 0x10000 : 0x1000;
    ms.device.boot_bypass = (knobs & 4) != 0;
    ms.device.max_domains = 4;
    ms.device.max_mappings = 64;
    ms.device.max_table_bytes = 256u << 10;
    ms.device.fold_fetch_budget = 1u << 14;
    ms.device.iotlb_entries = 64;
    ms.device.endpoints = 3;
    if (knobs & 8) ms.driver_features = ~feature(f_indirect_desc);
    machine<>& m = machine_for(ms);
    std::vector<std::uint8_t> out;

    for (unsigned step = 0; step < 64 && !in.empty(); ++step) {
        const std::uint8_t op = in.u8();
        m.set_shape({static_cast<unsigned>(op >> 4) + 1, (op & 8) != 0});
        switch (op & 7) {
        case 0: {  // raw request bytes
            const std::size_t n = in.u8();
            std::vector<std::uint8_t> req;
            for (std::size_t i = 0; i < n; ++i) req.push_back(in.u8());
            const std::uint32_t wlen = in.u16() & 0x3ff;
            check_tail(out, send(m, req, wlen, out));
            break;
        }
        case 1: {  // a well-formed request with fuzzed fields
            const std::uint8_t kind = in.u8() % 6;
            std::uint32_t wlen = 4;
            std::vector<std::uint8_t> req;
            if (kind == 0) {
                const std::uint32_t dom = in.u8() & 7, ep = in.u8() & 3;
                req = attach_request(dom, ep, (in.u8() & 1) != 0).readable;
            } else if (kind == 1) {
                const std::uint32_t dom = in.u8() & 7, ep = in.u8() & 3;
                req = detach_request(dom, ep).readable;
            } else if (kind == 2) {
                const std::uint32_t dom = in.u8() & 7;
                const std::uint64_t start = std::uint64_t{in.u16()} << 12;
                const std::uint64_t end = start + (std::uint64_t{in.u8()} << 12) + 0xfff;
                const std::uint64_t phys = (std::uint64_t{in.u16()} << 12) & (2 * ram_size - 1);  // half in RAM
                req = map_request(dom, start, end, phys, in.u8() & 7u).readable;
            } else if (kind == 3) {
                const std::uint32_t dom = in.u8() & 7;
                const std::uint64_t start = std::uint64_t{in.u16()} << 12;
                req = unmap_request(dom, start, start + (std::uint64_t{in.u8()} << 12) + 0xfff).readable;
            } else if (kind == 4) {
                // ATTACH_TABLE of an LPAE 4K table at a fuzzed GPA (its contents are whatever
                // the input wrote into guest memory).
                arm_lpae_s1_4k::config cfg{};
                cfg.ias = 32 + (in.u8() % 17);
                const std::uint64_t root = (std::uint64_t{in.u16()} << 12) & (ram_size - 1);
                auto r = sharing::make_attach_table<arm_lpae_s1_4k>(cfg, pa_t{root}, 1);
                if (!r) break;
                r->address_space = in.u8() & 7;
                req = attach_table_request(*r).readable;
            } else {
                const std::uint32_t dom = in.u8() & 7;
                const auto kind_bits = static_cast<invalidate_kind>(in.u8() % 4);  // 3: an unknown kind
                const std::uint64_t va = std::uint64_t{in.u16()} << 12, bytes = std::uint64_t{in.u16()} << 12;
                req = invalidate_request(dom, 0, kind_bits, va, bytes).readable;
            }
            check_tail(out, send(m, req, wlen, out));
            break;
        }
        case 2: {  // guest memory writes (its page tables, the rings, anything)
            const std::uint64_t at = (std::uint64_t{in.u32()} % ram_size) & ~std::uint64_t{7};
            const std::size_t n = in.u8();
            for (std::size_t i = 0; i < n; i += 8) {
                const std::uint64_t v = in.u64();
                (void)m.guest().write(pa_t{at + i}, &v, 8);
            }
            break;
        }
        case 3: {  // hostile descriptors and avail ring entries, then the device runs
            const std::uint64_t at = machine<>::requestq_gpa + (in.u16() % 0x200);
            const std::size_t n = in.u8() % 64;
            for (std::size_t i = 0; i < n; ++i) {
                const std::uint8_t b = in.u8();
                (void)m.guest().write(pa_t{at + i}, &b, 1);
            }
            (void)m.dev().process_requests();
            break;
        }
        case 4: {  // DMA
            const std::uint32_t ep = in.u8() & 3;
            const std::uint64_t iova = std::uint64_t{in.u32()} << 4;
            const std::uint64_t len = in.u16() + 1u;
            const auto access = static_cast<nested::access_kind>(in.u8() % 3);
            const dma_result r = m.dev().translate(ep, iova, len, access);
            FUZZ_CHECK(r.covered <= len, "covered %llu > %llu", (unsigned long long)r.covered, (unsigned long long)len);
            std::uint64_t sum = 0;
            for (unsigned i = 0; i < r.count; ++i) {
                sum += r.ranges[i].length;
                const std::uint64_t lo = r.ranges[i].hpa, hi = lo + (r.ranges[i].length - 1);
                FUZZ_CHECK(lo >= ms.host_base && hi < ms.host_base + ms.ram_size && hi >= lo,
                           "output [%llx, %llx] outside the guest's RAM", (unsigned long long)lo, (unsigned long long)hi);
            }
            FUZZ_CHECK(sum == r.covered, "ranges %llu != covered %llu", (unsigned long long)sum,
                       (unsigned long long)r.covered);
            if (r.count > 0) {
                FUZZ_CHECK(ep < 3, "endpoint %u unknown but translated", ep);
            }
            (void)m.take_events();
            break;
        }
        case 5: {  // config space
            std::uint8_t b = in.u8();
            (void)m.dev().write_config(in.u8() % 48, std::span<const std::uint8_t>(&b, 1));
            std::uint8_t cfg[48];
            m.dev().read_config(0, cfg);
            FUZZ_CHECK(cfg[36] <= 1, "bypass byte %u", cfg[36]);
            break;
        }
        case 6:
            if (in.u8() == 0x5a) m.dev().reset();
            break;
        default:
            (void)m.take_events();
            break;
        }
    }

    // Whatever happened, a well-formed request is still answered unless the guest broke the
    // ring itself (then the device says it needs a reset).
    if (!m.dev().needs_reset()) {
        m.set_shape({1, false});
        // The guest may have scribbled over the ring: the answer may be lost, but send() still
        // checks the used length against the writable space.
        (void)send(m, attach_request(1, 0).readable, 4, out);
    }
    return 0;
}
