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
/// well-formed request at the end. The fast protocol (knob 0x10 offers RELAXED, MAP_SG and
/// GROUPED; 0x20 keeps the driver strict): MAP_SG and groups of well-formed members with fuzzed
/// fields and flags, and a failed MAP_SG or group changes no domain, mapping or endpoint.
/// Page requests (knob 0x40 offers PAGE_REQUESTS; 0x80 puts F_FAULT on every ATTACH_TABLE):
/// DMA that stalls, PAGE_REPLY with open, closed or made-up ids, domains and reply values, the
/// guest answering what its eventq received, the clock moving, DETACH / reset / a broken ring
/// with accesses waiting. What must hold besides: a stalled access carries no fault and a token
/// never seen before; every completion names a waiting token, once, and its ranges lie in the
/// slot; the bounds (open requests per endpoint and in total, waiting accesses) hold after
/// every step and the device's count of waiting accesses is the harness's; a PAGE_REPLY
/// answered OK closed exactly one open request of that id and domain, a refused one changed no
/// open request; a device reset, or the clock moved past the timeout at the end, leaves nothing
/// waiting.
#include <algorithm>
#include <array>
#include <cstddef>
#include <set>
#include <optional>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>

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

/// What a refused MAP_SG or group must leave as it was: each endpoint's domain and every
/// domain's mappings.
struct device_state {
    std::array<std::optional<std::uint32_t>, 3> endpoint{};
    std::array<std::vector<mapping>, 8> maps{};
    std::array<bool, 8> has{};
    bool operator==(const device_state&) const = default;
};
device_state state_of(machine<>& m) {
    device_state s;
    for (std::uint32_t ep = 0; ep < 3; ++ep) s.endpoint[ep] = m.dev().domain_of(ep);
    for (std::uint32_t d = 0; d < 8; ++d)
        if (const auto* t = m.dev().mappings(d)) {
            s.has[d] = true;
            for (const auto& [first, mp] : t->mappings()) s.maps[d].push_back(mp);
        }
    return s;
}

/// MAP_SG with fuzzed fields (the element count in the head may lie).
std::vector<std::uint8_t> map_sg_bytes(fuzz::byte_reader& in) {
    req_map_sg r;
    r.head.type = static_cast<std::uint8_t>(req_type::map_sg);
    r.domain = in.u8() & 7;
    r.virt_start = std::uint64_t{in.u16()} << 12;
    r.size = std::uint64_t{(in.u8() & 15u) + 1} << 12;
    r.flags = in.u8() & 7u;
    const unsigned n = in.u8() % 9;
    r.nr_elems = (in.u8() & 0x80) ? n + 1 : n;
    std::vector<std::uint8_t> v(sizeof r + n * 8);
    std::memcpy(v.data(), static_cast<const void*>(&r), sizeof r);
    for (unsigned i = 0; i < n; ++i) {
        const std::uint64_t phys = (std::uint64_t{in.u16()} << 12) & (2 * ram_size - 1);
        std::memcpy(v.data() + sizeof r + i * 8, &phys, 8);
    }
    return v;
}

/// The tokens of the accesses the device stalled and has not completed, as the VMM knows them.
struct stalled_tracker {
    std::set<std::uint64_t> waiting;
    std::uint64_t last_token = 0;
    std::vector<dma_completion> done;

    void stalled(const dma_result& r) {
        FUZZ_CHECK(!r.fault, "a stalled access carries a fault");
        FUZZ_CHECK(r.pending > last_token, "token %llu reused", (unsigned long long)r.pending);
        last_token = r.pending;
        waiting.insert(r.pending);
    }
    /// Takes the completions and checks them and the bounds.
    void check(machine<>& m, const page_request_limits& lim, std::uint64_t ram_base, std::uint64_t ram_bytes) {
        done.clear();
        m.dev().take_completions(done);
        for (const auto& c : done) {
            FUZZ_CHECK(waiting.erase(c.token) == 1, "completion of token %llu not waiting", (unsigned long long)c.token);
            FUZZ_CHECK(c.result.fault.has_value() != (c.result.count > 0), "a completion with ranges and a fault, or neither");
            FUZZ_CHECK(!c.result.stalled(), "a completion that stalled again");
            for (unsigned i = 0; i < c.result.count; ++i) {
                const std::uint64_t lo = c.result.ranges[i].hpa, hi = lo + (c.result.ranges[i].length - 1);
                FUZZ_CHECK(lo >= ram_base && hi < ram_base + ram_bytes && hi >= lo, "completion output outside RAM");
            }
        }
        const auto& open = m.dev().page_requests();
        FUZZ_CHECK(open.size() <= lim.total, "%zu page requests open", open.size());
        FUZZ_CHECK(m.dev().stalled_accesses() <= lim.accesses, "%zu accesses waiting", m.dev().stalled_accesses());
        FUZZ_CHECK(m.dev().stalled_accesses() == waiting.size(), "device waits for %zu accesses, the VMM for %zu",
                   m.dev().stalled_accesses(), waiting.size());
        for (const auto& r : open) {
            const auto mine = std::count_if(open.begin(), open.end(), [&](const page_request& o) { return o.endpoint == r.endpoint; });
            FUZZ_CHECK(static_cast<std::uint64_t>(mine) <= lim.per_endpoint, "endpoint %u: %ld open", r.endpoint, (long)mine);
            FUZZ_CHECK(m.dev().domain_of(r.endpoint) == std::optional<std::uint32_t>(r.domain),
                       "a page request of endpoint %u outlived its domain", r.endpoint);
            FUZZ_CHECK(!r.waiting.empty(), "a page request nobody waits for");
        }
    }
};

/// The open page requests as (id, domain, waiting accesses).
std::vector<std::array<std::uint64_t, 3>> open_requests(machine<>& m) {
    std::vector<std::array<std::uint64_t, 3>> v;
    for (const auto& r : m.dev().page_requests()) v.push_back({r.id, r.domain, r.waiting.size()});
    return v;
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
    if (knobs & 0x10) ms.device.features |= feature(f_relaxed) | feature(f_map_sg) | feature(f_grouped);
    if (knobs & 0x20) ms.driver_features &= ~feature(f_relaxed);
    ms.device.group_max = 4;
    ms.device.map_sg_max = 8;
    const bool page_requests = (knobs & 0x40) != 0;
    if (page_requests) ms.device.features |= feature(f_page_requests);
    ms.device.page_requests.per_endpoint = 2;
    ms.device.page_requests.total = 4;
    ms.device.page_requests.accesses = 6;
    ms.device.page_requests.timeout_us = 1000;
    const std::uint32_t attach_flags = (knobs & 0x80) ? table_f_fault : 0;
    machine<>& m = fuzz::reused_machine<machine<>>(ms);
    std::vector<std::uint8_t> out;
    stalled_tracker tracker;
    std::uint64_t now_us = 0;

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
            const std::uint8_t kind = in.u8() % 8;
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
                r->flags = attach_flags;
                req = attach_table_request(*r).readable;
            } else if (kind == 6) {
                const device_state before = state_of(m);
                const std::uint32_t used = send(m, map_sg_bytes(in), wlen, out);
                check_tail(out, used);
                if (used == 4 && out[0] != 0 && out[0] != static_cast<std::uint8_t>(status::deverr))
                    FUZZ_CHECK(state_of(m) == before, "a refused MAP_SG changed the device");
                break;
            } else if (kind == 7) {
                // A group of well-formed members (ATTACH, DETACH, MAP, UNMAP, MAP_SG), G on each
                // and L on the last unless the input says otherwise.
                const unsigned n = (in.u8() % 6) + 1;
                const std::uint8_t head_bits = in.u8();
                for (unsigned i = 0; i < n; ++i) {
                    std::vector<std::uint8_t> part;
                    const std::uint8_t k = in.u8() % 5;
                    const std::uint32_t dom = in.u8() & 7;
                    if (k == 0) {
                        part = attach_request(dom, in.u8() & 3, false).readable;
                    } else if (k == 1) {
                        part = detach_request(dom, in.u8() & 3).readable;
                    } else if (k == 2) {
                        const std::uint64_t start = std::uint64_t{in.u16()} << 12;
                        const std::uint64_t phys = (std::uint64_t{in.u16()} << 12) & (2 * ram_size - 1);
                        const std::uint64_t last = start + (std::uint64_t{in.u8()} << 12) + 0xfff;
                        part = map_request(dom, start, last, phys, in.u8() & 7u).readable;
                    } else if (k == 3) {
                        const std::uint64_t start = std::uint64_t{in.u16()} << 12;
                        part = unmap_request(dom, start, start + (std::uint64_t{in.u8()} << 12) + 0xfff).readable;
                    } else {
                        part = map_sg_bytes(in);  // its own domain byte follows
                    }
                    part[1] = static_cast<std::uint8_t>((req_f_group >> 8) | (i + 1 == n ? req_f_last >> 8 : 0));
                    if (head_bits & 0x80) part[1] ^= static_cast<std::uint8_t>(head_bits & 7);  // break the framing
                    req.insert(req.end(), part.begin(), part.end());
                }
                const device_state before = state_of(m);
                const std::uint32_t used = send(m, req, wlen, out);
                check_tail(out, used);
                if (used == 4 && out[0] != 0 && out[0] != static_cast<std::uint8_t>(status::deverr))
                    FUZZ_CHECK(state_of(m) == before, "a refused group changed the device");
                break;
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
            if (r.stalled()) tracker.stalled(r);
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
        case 6: {
            const std::uint8_t b = in.u8();
            if (b == 0x5a) {
                m.dev().reset();
                FUZZ_CHECK(m.dev().page_requests().empty() && m.dev().stalled_accesses() == 0,
                           "page requests survived a reset");
            } else if (page_requests && (b & 3) == 1) {
                // PAGE_REPLY: an open id or a made-up one, its domain or another, any reply, maybe
                // reserved bytes set.
                const auto before = open_requests(m);
                const std::uint8_t pick = in.u8();
                std::uint32_t id = in.u8();
                std::uint32_t dom = in.u8() & 7;
                if ((pick & 1) && !before.empty()) {
                    const auto& o = before[in.u8() % before.size()];
                    id = static_cast<std::uint32_t>(o[0]);
                    if (pick & 2) dom = static_cast<std::uint32_t>(o[1]);
                }
                std::vector<std::uint8_t> req = page_reply_request(dom, id, in.u8() % 3, std::uint64_t{in.u16()} << 12).readable;
                if (pick & 0x80) req[offsetof(req_page_reply, reserved) + (pick & 3)] = 1;
                const std::uint32_t used = send(m, req, 4, out);
                check_tail(out, used);
                const auto after = open_requests(m);
                if (used == 4 && out[0] == 0) {
                    const bool was_open = std::any_of(before.begin(), before.end(),
                                                      [&](const auto& o) { return o[0] == id && o[1] == dom; });
                    FUZZ_CHECK(was_open, "PAGE_REPLY OK for id %u domain %u not open", id, dom);
                    // The reply closes its request; retrying that request's accesses may
                    // post fault events, and a queue found broken then (the guest may have
                    // written over the eventq's rings) fails every stalled access: all close
                    // (device.hpp process_requests; regressions/fuzz_device/reply-breaks-queue).
                    if (m.dev().needs_reset())
                        FUZZ_CHECK(after.empty(), "a queue broke and %zu page requests stayed open", after.size());
                    else
                        FUZZ_CHECK(after.size() + 1 == before.size(), "PAGE_REPLY OK closed %zu requests",
                                   before.size() - after.size());
                } else if (used == 4) {
                    FUZZ_CHECK(after == before, "a refused PAGE_REPLY changed the page requests");
                }
            } else if (page_requests && (b & 3) == 2) {  // the clock
                now_us += std::uint64_t{in.u16()};
                m.dev().advance_clock(now_us);
            } else if (page_requests && (b & 3) == 3) {
                // The guest answers what its eventq received (the page may or may not be mapped:
                // op 2 writes its tables).
                for (const auto& ev : m.take_page_requests()) {
                    auto p = parse_page_request(ev);
                    FUZZ_CHECK(p.has_value(), "the device posted a malformed page request");
                    FUZZ_CHECK(p->address % 0x1000 == 0 && p->endpoint < 3, "page request fields");
                    check_tail(out, send(m, page_reply_request(p->address_space, p->id, in.u8() & 1).readable, 4, out));
                }
            }
            break;
        }
        default:
            (void)m.take_events();
            (void)m.take_page_requests();
            break;
        }
        tracker.check(m, ms.device.page_requests, ms.host_base, ms.ram_size);
    }

    // Nothing waits forever: past the timeout every stalled access has completed.
    m.dev().advance_clock(~std::uint64_t{0});
    tracker.check(m, ms.device.page_requests, ms.host_base, ms.ram_size);
    FUZZ_CHECK(tracker.waiting.empty(), "%zu accesses still waiting past the timeout", tracker.waiting.size());

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
