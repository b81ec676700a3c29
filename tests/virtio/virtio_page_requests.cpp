// SPDX-License-Identifier: MIT
// Page requests (issue 14, part 1; virtio/README.md "Page requests"): a shared table attached
// with F_FAULT stalls the DMA that misses, the device posts a page request on the eventq, the
// guest's fault handler maps the page in its own table (driver.hpp shared_table::resolve) and
// replies with PAGE_REPLY, and the device retries the stalled accesses. Every rule with the
// test that breaks when the rule does: numbers and negotiation, the round trip, joining and
// ordering, failure and re-faulting, the bounds, the timeout, refused replies, DETACH / new
// table / reset / broken queue with accesses waiting, no event buffer, the folded mode, and a
// random hostile sequence against the invariants.
#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include <catch2/catch.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>

#include "virtio/virtio_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using namespace virtio_test;
using nested::access_kind;
constexpr std::uint64_t page = 0x1000;
constexpr std::uint64_t dma = machine<arm_host>::dma_gpa;

machine_settings pr_settings(shared_mode mode = shared_mode::nested, page_request_limits lim = {}) {
    machine_settings s = small_machine();
    s.device.sharing = mode;
    s.device.features |= feature(f_page_requests);
    s.device.page_requests = lim;
    return s;
}

/// An Arm host whose one shareable format cannot stall.
struct nostall_host {
    static constexpr const char* name = "arm-nostall";
    using domain_format = arm_lpae_s1_4k;
    using stage2_format = arm_lpae_s2_4k;
    static auto table_formats() {
        sharing::device_format<arm_lpae_s1_4k> f;
        f.stall = false;
        return boost::hana::make_tuple(f);
    }
};

/// A VM whose endpoint 0 is in domain 1, which holds the guest's own LPAE table attached with
/// `flags` (F_FAULT by default) through the driver's shared_table.
template <class Host = arm_host>
struct pr_vm {
    using S1 = arm_lpae_s1_4k;
    using table_type = shared_table<S1, typename Host::stage2_format, guest_ram, machine<Host>>;
    std::unique_ptr<machine<Host>> m;
    std::optional<driver<machine<Host>>> drv;
    std::optional<table_type> t;

    explicit pr_vm(const machine_settings& s = pr_settings(), std::uint32_t flags = table_f_fault) {
        auto r = machine<Host>::create(s);
        REQUIRE(r.ok());
        m = std::move(*r);
        drv.emplace(*m);
        REQUIRE(drv->attach(1, 0) == status::ok);
        auto tt = table_type::create(*drv, m->stage2_table(), ipa_t{machine<Host>::table_window_gpa},
                                     machine<Host>::table_window_size / 2, typename S1::config{}, 1, 1, nullptr, flags);
        REQUIRE(tt.ok());
        t.emplace(std::move(*tt));
    }
    device<Host>& dev() { return m->dev(); }
    std::uint64_t hpa(std::uint64_t gpa) { return m->guest().hpa_base() + gpa; }
    dma_result touch(std::uint32_t ep, std::uint64_t iova, access_kind a = access_kind::read, std::uint64_t size = 1) {
        return dev().translate(ep, iova, size, a);
    }
    std::vector<page_request_info> requests() {
        std::vector<page_request_info> out;
        for (const auto& ev : m->take_page_requests()) {
            auto p = parse_page_request(ev);
            REQUIRE(p);
            out.push_back(*p);
        }
        return out;
    }
    std::vector<dma_completion> completions() {
        std::vector<dma_completion> out;
        dev().take_completions(out);
        return out;
    }
    named reply(std::uint32_t dom, std::uint32_t id, std::uint32_t reply, std::uint64_t paddr = 0) {
        return named{drv->page_reply(dom, id, reply, paddr)};
    }
    /// The guest's fault handler maps the page to `gpa` (read/write) and replies.
    named serve(const page_request_info& p, std::uint64_t gpa, prot perm = prot::read | prot::write | prot::cache) {
        return named{t->resolve(p, [&](const page_request_info&) {
            return std::optional<typename table_type::page_grant>(typename table_type::page_grant{ipa_t{gpa}, perm});
        })};
    }
    /// One stall at `iova` of endpoint 0, its page request returned.
    page_request_info stall(std::uint64_t iova, access_kind a = access_kind::read) {
        const dma_result r = touch(0, iova, a);
        REQUIRE(r.stalled());
        REQUIRE(r.ok());
        auto reqs = requests();
        REQUIRE(reqs.size() == 1);
        return reqs[0];
    }
};

/// A completion that translated to `hpa`.
void check_done(const dma_completion& c, std::uint64_t token, std::uint64_t hpa) {
    CHECK(c.token == token);
    REQUIRE(c.result.ok());
    REQUIRE(c.result.count == 1);
    CHECK(c.result.ranges[0].hpa == hpa);
}
/// A completion that faulted with `reason` at `iova`.
void check_fault(const dma_completion& c, std::uint64_t token, std::uint8_t reason, std::uint64_t iova) {
    CHECK(c.token == token);
    REQUIRE(c.result.fault);
    CHECK(c.result.fault->reason == reason);
    CHECK(c.result.fault->address == iova);
    CHECK(c.result.count == 0);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Numbers and negotiation
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: the registry's numbers do not collide", "[virtio][page_requests]") {
    // Feature bits: the spec's 0–6, the drafts' 5–9, this project's 20–23, transport 24–40.
    for (unsigned b : {f_input_range, f_domain_range, f_map_unmap, f_bypass, f_probe, f_mmio, f_bypass_config, f_relaxed,
                       f_map_sg, f_grouped, f_table_sharing, f_indirect_desc, f_event_idx, f_version_1})
        CHECK(b != f_page_requests);
    CHECK(f_page_requests == 19);
    CHECK(f_page_requests > 9);
    // Request types: the spec's 1–5, the drafts' 6–8 (8 = PAGE_RESP), this project's 0x40–0x43.
    CHECK(static_cast<unsigned>(req_type::page_reply) == 0x44);
    // The event: reasons 0–2 are the spec's.
    CHECK(fault_r_page_request == 0x40);
    CHECK(sizeof(page_request_event) == 32);
    CHECK(sizeof(req_page_reply) == 32);
    CHECK(table_f_fault == 4);
    CHECK(sharing::cap_stall == 0x80);
    CHECK_FALSE(groupable(static_cast<std::uint8_t>(req_type::page_reply)));
}

TEST_CASE("page requests: negotiation, F_FAULT and PROBE_TABLE's stall flag", "[virtio][page_requests]") {
    SECTION("PAGE_REQUESTS needs TABLE_SHARING (device and driver)") {
        machine_settings s = pr_settings();
        s.device.features &= ~feature(f_table_sharing);
        auto r = machine<arm_host>::create(s);
        REQUIRE_FALSE(r.ok());
        CHECK(r.why().field == "features: PAGE_REQUESTS without TABLE_SHARING");
        const std::uint64_t offered = feature(f_version_1) | feature(f_map_unmap) | feature(f_page_requests);
        CHECK((negotiate_features(offered, ~std::uint64_t{0}) & feature(f_page_requests)) == 0);
        CHECK((negotiate_features(offered | feature(f_table_sharing), ~std::uint64_t{0}) & feature(f_page_requests)) != 0);
    }
    SECTION("not offered: F_FAULT UNSUPP, PAGE_REPLY unanswered") {
        machine_settings s = pr_settings();
        s.device.features &= ~feature(f_page_requests);
        auto m = std::move(*machine<arm_host>::create(s));
        driver<machine<arm_host>> d(*m);
        REQUIRE(d.attach(1, 0) == status::ok);
        using T = shared_table<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram, machine<arm_host>>;
        auto t = T::create(d, m->stage2_table(), ipa_t{machine<arm_host>::table_window_gpa}, 1 << 20, {}, 1, 1, nullptr,
                           table_f_fault);
        REQUIRE_FALSE(t.ok());
        CHECK(t.why().code == status::unsupp);
        auto rep = d.send(page_reply_request(1, 1, page_reply_handled));
        CHECK(rep.used == 0);
        CHECK(m->dev().stats().unanswered[0x44] == 1);
    }
    SECTION("offered, not negotiated: F_FAULT UNSUPP, PAGE_REPLY UNSUPP, no stall flag") {
        machine_settings s = pr_settings();
        s.driver_features = ~feature(f_page_requests);
        pr_vm<> v(s, 0);
        CHECK(v.drv->page_reply(1, 1, page_reply_handled) == status::unsupp);
        auto req = sharing::make_attach_table<arm_lpae_s1_4k>(v.t->table().cfg(), pa_t{v.t->root().value}, 1);
        REQUIRE(req.ok());
        req->flags = table_f_fault;
        CHECK(v.drv->attach_table(1, *req) == status::unsupp);
        auto probe = v.drv->probe_table(0, 8);
        REQUIRE(probe.ok());
        for (const auto& f : probe->formats) CHECK((f.format[11] & sharing::cap_stall) == 0);
        // And a miss faults as always.
        const dma_result r = v.touch(0, 0x5000);
        CHECK_FALSE(r.stalled());
        CHECK(r.fault);
    }
    SECTION("negotiated: every format that stalls says so; F_FAULT accepted") {
        pr_vm<> v;
        auto probe = v.drv->probe_table(0, 8);
        REQUIRE(probe.ok());
        REQUIRE_FALSE(probe->formats.empty());
        for (const auto& f : probe->formats) CHECK((f.format[11] & sharing::cap_stall) != 0);
    }
    SECTION("a format that cannot stall: no flag, F_FAULT UNSUPP, without F_FAULT fine") {
        auto m = std::move(*machine<nostall_host>::create(pr_settings()));
        driver<machine<nostall_host>> d(*m);
        REQUIRE(d.attach(1, 0) == status::ok);
        auto probe = d.probe_table(0, 8);
        REQUIRE(probe.ok());
        REQUIRE(probe->formats.size() == 1);
        CHECK((probe->formats[0].format[11] & sharing::cap_stall) == 0);
        using T = shared_table<arm_lpae_s1_4k, arm_lpae_s2_4k, guest_ram, machine<nostall_host>>;
        auto t = T::create(d, m->stage2_table(), ipa_t{machine<nostall_host>::table_window_gpa}, 1 << 20, {}, 1, 1,
                           nullptr, table_f_fault);
        REQUIRE_FALSE(t.ok());
        CHECK(t.why().code == status::unsupp);
        auto t2 = T::create(d, m->stage2_table(), ipa_t{machine<nostall_host>::table_window_gpa}, 1 << 20, {}, 1, 1);
        CHECK(t2.ok());
    }
    SECTION("a table attached without F_FAULT never stalls") {
        pr_vm<> v(pr_settings(), 0);
        const dma_result r = v.touch(0, 0x5000);
        CHECK_FALSE(r.stalled());
        REQUIRE(r.fault);
        CHECK(r.fault->reason == fault_r_mapping);
        CHECK(v.requests().empty());
    }
}

// ---------------------------------------------------------------------------------------------
// The round trip
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: stall, event, the guest maps, reply, resumed access", "[virtio][page_requests]") {
    pr_vm<> v;
    const dma_result r = v.touch(0, 0x5123, access_kind::write, 8);
    REQUIRE(r.stalled());
    CHECK(r.ok());
    CHECK(r.covered == 0);
    CHECK(v.dev().page_requests().size() == 1);
    CHECK(v.dev().stalled_accesses() == 1);
    auto reqs = v.requests();
    REQUIRE(reqs.size() == 1);
    const page_request_info p = reqs[0];
    CHECK(p.endpoint == 0);
    CHECK(p.address_space == 1);
    CHECK(p.context == 0);
    CHECK(p.address == 0x5000);
    CHECK(p.flags == fault_f_write);
    CHECK(p.id != 0);
    CHECK(v.m->take_events().empty());  // a page request is no fault event
    CHECK(v.completions().empty());     // nothing completes before the reply

    REQUIRE(v.serve(p, dma + 0x7000) == st::ok);
    auto done = v.completions();
    REQUIRE(done.size() == 1);
    check_done(done[0], r.pending, v.hpa(dma + 0x7123));
    CHECK(done[0].iova == 0x5123);
    CHECK(done[0].result.covered == 8);
    CHECK(v.dev().page_requests().empty());
    CHECK(v.dev().stalled_accesses() == 0);
    CHECK(v.t->resolved() == 1);
    // The page is there now: the next access translates at once.
    const dma_result again = v.touch(0, 0x5fff, access_kind::write);
    CHECK_FALSE(again.stalled());
    REQUIRE(again.ok());
    CHECK(again.ranges[0].hpa == v.hpa(dma + 0x7fff));
    const auto& st = v.dev().page_request_stats();
    CHECK(st.requests == 1);
    CHECK(st.replies_handled == 1);
    CHECK(st.completed_ok == 1);
    // The same reply again: the id is closed.
    CHECK(v.reply(1, p.id, page_reply_handled) == st::inval);
}

TEST_CASE("page requests and the vhost IOTLB service: a MISS that stalls is ACCESS_FAIL, the guest is asked, "
          "the MISS after its reply gets the UPDATE",
          "[virtio][page_requests][vhost]") {
    namespace vh = iopgtable::virtio::vhost;
    pr_vm<> v;
    vh::memory_stream stream;
    vh::vhost_settings vs;
    vs.endpoints = {0};
    // The VMM maps every host address 1:1 at 0x7f0000000000 + hpa.
    vh::vhost_iotlb_service<arm_host, vh::memory_stream> svc(
        v.dev(), stream, [](std::uint64_t hpa, std::uint64_t) { return std::optional<std::uint64_t>(0x7f0000000000 + hpa); },
        vs);
    auto miss = [&](std::uint64_t iova) {
        const vh::frame f{vh::msg_v2, 0, vh::iotlb_msg{iova, 0, 0, vh::access_ro, vh::iotlb_miss}};
        const auto b = vh::encode(f);
        REQUIRE(stream.push(b));
        REQUIRE(svc.poll() == 1);
        const auto out = stream.take();
        REQUIRE(out.size() == vh::frame_size);
        return vh::decode(std::span<const std::uint8_t, vh::frame_size>(out.data(), vh::frame_size));
    };
    const vh::frame first = miss(0x5010);
    CHECK(first.msg.type == vh::iotlb_access_fail);
    CHECK(v.m->take_events().empty());  // no fault: the access waits on a page request
    auto reqs = v.requests();
    REQUIRE(reqs.size() == 1);
    CHECK(reqs[0].address == 0x5000);
    CHECK(svc.ranges() == 0);
    REQUIRE(v.serve(reqs[0], dma + 0x7000) == st::ok);
    auto done = v.completions();  // the VMM's: the stalled access the MISS made
    REQUIRE(done.size() == 1);
    CHECK(done[0].result.ok());
    const vh::frame second = miss(0x5010);
    CHECK(second.msg.type == vh::iotlb_update);
    CHECK(second.msg.iova == 0x5000);
    CHECK(second.msg.uaddr == 0x7f0000000000 + v.hpa(dma + 0x7000));
    CHECK(svc.ranges() == 1);
}

TEST_CASE("page requests: an access stalls after the bytes it translated", "[virtio][page_requests]") {
    pr_vm<> v;
    REQUIRE(v.t->map(arm_lpae_s1_4k::input_address{0x4000}, ipa_t{dma}, length_t{page}, prot::read | prot::cache).ok());
    const dma_result r = v.touch(0, 0x4ff0, access_kind::read, 0x20);
    REQUIRE(r.stalled());
    CHECK(r.covered == 0x10);
    REQUIRE(r.count == 1);
    CHECK(r.ranges[0].hpa == v.hpa(dma + 0xff0));
    auto reqs = v.requests();
    REQUIRE(reqs.size() == 1);
    CHECK(reqs[0].address == 0x5000);
    REQUIRE(v.serve(reqs[0], dma + 0x3000) == st::ok);
    auto done = v.completions();
    REQUIRE(done.size() == 1);
    CHECK(done[0].iova == 0x5000);
    check_done(done[0], r.pending, v.hpa(dma + 0x3000));
    CHECK(done[0].result.covered == 0x10);
}

TEST_CASE("page requests: one per (endpoint, page); later accesses join it, completed in order",
          "[virtio][page_requests]") {
    pr_vm<> v;
    REQUIRE(v.drv->attach(1, 1) == status::ok);  // endpoint 1 shares domain 1's table
    const dma_result a = v.touch(0, 0x9000);
    const dma_result b = v.touch(0, 0x9800, access_kind::write);
    const dma_result c = v.touch(0, 0x9004);
    const dma_result other_page = v.touch(0, 0xa000);
    const dma_result other_ep = v.touch(1, 0x9000);
    for (const auto* r : {&a, &b, &c, &other_page, &other_ep}) REQUIRE(r->stalled());
    std::set<std::uint64_t> tokens{a.pending, b.pending, c.pending, other_page.pending, other_ep.pending};
    CHECK(tokens.size() == 5);
    auto reqs = v.requests();
    REQUIRE(reqs.size() == 3);  // (0, 0x9000), (0, 0xa000), (1, 0x9000), posted in that order
    CHECK(reqs[0].endpoint == 0);
    CHECK(reqs[0].address == 0x9000);
    CHECK(reqs[0].flags == fault_f_read);  // the first access's
    CHECK(reqs[1].address == 0xa000);
    CHECK(reqs[2].endpoint == 1);
    CHECK(reqs[0].id < reqs[1].id);
    CHECK(reqs[1].id < reqs[2].id);
    CHECK(v.dev().page_request_stats().joined == 2);
    CHECK(v.dev().stalled_accesses() == 5);

    REQUIRE(v.serve(reqs[0], dma + 0x1000) == st::ok);
    auto done = v.completions();
    REQUIRE(done.size() == 3);  // a, b, c in the order they stalled
    check_done(done[0], a.pending, v.hpa(dma + 0x1000));
    check_done(done[1], b.pending, v.hpa(dma + 0x1800));
    check_done(done[2], c.pending, v.hpa(dma + 0x1004));
    CHECK(v.dev().page_requests().size() == 2);
    // Endpoint 1's request was for the same page of the same table: the retry finds it mapped.
    REQUIRE(v.reply(1, reqs[2].id, page_reply_handled, dma + 0x1000) == st::ok);
    done = v.completions();
    REQUIRE(done.size() == 1);
    check_done(done[0], other_ep.pending, v.hpa(dma + 0x1000));
}

TEST_CASE("page requests: a failed reply, a retry that faults again", "[virtio][page_requests]") {
    pr_vm<> v;
    SECTION("reply FAILED: every waiting access completes with MAPPING, reported on the eventq") {
        const dma_result a = v.touch(0, 0x5000, access_kind::exec);
        const dma_result b = v.touch(0, 0x5008);
        const auto reqs = v.requests();
        REQUIRE(reqs.size() == 1);
        CHECK(reqs[0].flags == (fault_f_read | fault_f_exec));
        const named s{v.t->resolve(reqs[0], [](const page_request_info&) {
            return std::optional<pr_vm<>::table_type::page_grant>{};
        })};
        REQUIRE(s == st::ok);
        CHECK(v.t->declined() == 1);
        auto done = v.completions();
        REQUIRE(done.size() == 2);
        check_fault(done[0], a.pending, fault_r_mapping, 0x5000);
        CHECK((done[0].result.fault->flags & fault_f_exec) != 0);
        check_fault(done[1], b.pending, fault_r_mapping, 0x5008);
        const auto events = v.m->take_events();
        REQUIRE(events.size() == 2);
        CHECK(events[0].reason == fault_r_mapping);
        CHECK(events[1].address.get() == 0x5008);
        CHECK(v.dev().page_request_stats().replies_failed == 1);
        // Nothing was mapped: a new access asks again.
        CHECK(v.touch(0, 0x5000).stalled());
    }
    SECTION("reply HANDLED but the page is not there: the unrecoverable fault, no second request") {
        (void)v.stall(0x6000);
        const auto open = v.dev().page_requests();
        REQUIRE(open.size() == 1);
        const std::uint64_t token = open[0].waiting[0].token;
        REQUIRE(v.reply(1, open[0].id, page_reply_handled, dma) == st::ok);
        auto done = v.completions();
        REQUIRE(done.size() == 1);
        check_fault(done[0], token, fault_r_mapping, 0x6000);
        CHECK(v.requests().empty());
        CHECK(v.dev().page_requests().empty());
        CHECK(v.dev().page_request_stats().completed_fault == 1);
    }
    SECTION("a write to a read-only page asks for it; mapped read-only again, the write faults") {
        REQUIRE(v.t->map(arm_lpae_s1_4k::input_address{0x7000}, ipa_t{dma}, length_t{page}, prot::read | prot::cache).ok());
        const dma_result w = v.touch(0, 0x7000, access_kind::write);
        REQUIRE(w.stalled());
        const auto reqs = v.requests();
        REQUIRE(reqs.size() == 1);
        CHECK(reqs[0].flags == fault_f_write);
        // The handler cannot map over the existing entry: resolve replies FAILED.
        REQUIRE(v.serve(reqs[0], dma + 0x1000) == st::ok);
        auto done = v.completions();
        REQUIRE(done.size() == 1);
        check_fault(done[0], w.pending, fault_r_mapping, 0x7000);
        CHECK(v.t->declined() == 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: bounds per endpoint, in total and on waiting accesses", "[virtio][page_requests]") {
    page_request_limits lim;
    lim.per_endpoint = 2;
    lim.total = 3;
    lim.accesses = 5;
    pr_vm<> v(pr_settings(shared_mode::nested, lim));
    REQUIRE(v.drv->attach(1, 1) == status::ok);
    auto not_stalled = [&] { return v.dev().page_request_stats().not_stalled; };

    REQUIRE(v.touch(0, 0x10000).stalled());
    REQUIRE(v.touch(0, 0x11000).stalled());
    // Endpoint 0's third page: the per-endpoint bound; the access faults at once.
    dma_result r = v.touch(0, 0x12000);
    CHECK_FALSE(r.stalled());
    REQUIRE(r.fault);
    CHECK(r.fault->reason == fault_r_mapping);
    CHECK(not_stalled() == 1);
    // Endpoint 1 may open one: the total bound is 3.
    REQUIRE(v.touch(1, 0x10000).stalled());
    r = v.touch(1, 0x13000);
    CHECK_FALSE(r.stalled());
    CHECK(not_stalled() == 2);
    CHECK(v.dev().page_requests().size() == 3);
    // Joining an open request still works up to the access bound (5).
    REQUIRE(v.touch(0, 0x10008).stalled());
    REQUIRE(v.touch(1, 0x10008).stalled());
    CHECK(v.dev().stalled_accesses() == 5);
    r = v.touch(0, 0x11008);
    CHECK_FALSE(r.stalled());
    CHECK(r.fault);
    CHECK(not_stalled() == 3);
    CHECK(v.dev().stalled_accesses() == 5);
    // A reply makes room again.
    auto reqs = v.requests();
    REQUIRE(reqs.size() == 3);
    REQUIRE(v.serve(reqs[0], dma) == st::ok);
    CHECK(v.completions().size() == 2);
    CHECK(v.dev().stalled_accesses() == 3);
    CHECK(v.touch(0, 0x12000).stalled());
}

TEST_CASE("page requests: bounds of zero stall nothing", "[virtio][page_requests]") {
    page_request_limits lim;
    lim.accesses = 0;
    pr_vm<> v(pr_settings(shared_mode::nested, lim));
    const dma_result r = v.touch(0, 0x5000);
    CHECK_FALSE(r.stalled());
    CHECK(r.fault);
    CHECK(v.requests().empty());
}

TEST_CASE("page requests: the timeout, on the device's explicit clock", "[virtio][page_requests]") {
    page_request_limits lim;
    lim.timeout_us = 1000;
    pr_vm<> v(pr_settings(shared_mode::nested, lim));
    v.dev().advance_clock(500);
    const dma_result a = v.touch(0, 0x5000);
    const auto p = v.requests().at(0);
    v.dev().advance_clock(1000);
    const dma_result b = v.touch(0, 0x6000);  // posted at 1000
    v.dev().advance_clock(1499);
    CHECK(v.completions().empty());
    CHECK(v.dev().page_requests().size() == 2);
    v.dev().advance_clock(1200);  // backwards: ignored
    CHECK(v.dev().clock_us() == 1499);
    v.dev().advance_clock(1500);  // a's request is 1000 µs old
    auto done = v.completions();
    REQUIRE(done.size() == 1);
    check_fault(done[0], a.pending, fault_r_mapping, 0x5000);
    CHECK(v.dev().page_request_stats().timeouts == 1);
    CHECK(v.dev().page_requests().size() == 1);
    // The late reply names a closed id.
    CHECK(v.reply(1, p.id, page_reply_handled) == st::inval);
    v.dev().advance_clock(~std::uint64_t{0});
    done = v.completions();
    REQUIRE(done.size() == 1);
    check_fault(done[0], b.pending, fault_r_mapping, 0x6000);
    CHECK(v.dev().page_requests().empty());
}

// ---------------------------------------------------------------------------------------------
// Refused replies
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: replies refused change nothing", "[virtio][page_requests]") {
    pr_vm<> v;
    REQUIRE(v.drv->attach(2, 2) == status::ok);  // another domain (MAP/UNMAP)
    const page_request_info p = v.stall(0x5000);
    auto still_open = [&] {
        CHECK(v.dev().page_requests().size() == 1);
        CHECK(v.dev().stalled_accesses() == 1);
        CHECK(v.completions().empty());
    };
    CHECK(v.reply(1, p.id + 1, page_reply_handled) == st::inval);  // unknown id
    CHECK(v.reply(1, 0, page_reply_handled) == st::inval);
    CHECK(v.reply(2, p.id, page_reply_handled) == st::inval);  // another domain
    CHECK(v.reply(7, p.id, page_reply_failed) == st::inval);   // no such domain
    CHECK(v.reply(1, p.id, 2) == st::inval);                   // neither HANDLED nor FAILED
    {
        req_page_reply r;
        r.head.type = static_cast<std::uint8_t>(req_type::page_reply);
        r.address_space = 1;
        r.id = p.id;
        r.reserved[3] = 1;
        std::array<std::uint8_t, 4> out{};
        REQUIRE(v.m->submit(readable(r), out) == 4);
        CHECK(out[0] == static_cast<std::uint8_t>(status::inval));
        bytes longer = readable(r);
        longer[offsetof(req_page_reply, reserved) + 3] = 0;
        longer.push_back(0);
        REQUIRE(v.m->submit(longer, out) == 4);
        CHECK(out[0] == static_cast<std::uint8_t>(status::inval));
        bytes shorter = readable(r);
        shorter.pop_back();
        CHECK(v.m->submit(shorter, out) == 0);  // shorter than the request: unanswered
    }
    still_open();
    CHECK(v.reply(1, p.id, page_reply_handled) == st::ok);
    CHECK(v.completions().size() == 1);
}

// ---------------------------------------------------------------------------------------------
// Nothing leaks: DETACH, a new table, reset, a broken queue, no event buffer
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: DETACH, a move or a new table with accesses waiting", "[virtio][page_requests]") {
    pr_vm<> v;
    REQUIRE(v.drv->attach(1, 1) == status::ok);
    SECTION("DETACH: the endpoint's requests close, DOMAIN; the other endpoint's stay") {
        const dma_result a = v.touch(0, 0x5000);
        const dma_result b = v.touch(0, 0x5008);
        const dma_result c = v.touch(1, 0x5000);
        const auto reqs = v.requests();
        REQUIRE(reqs.size() == 2);
        REQUIRE(v.drv->detach(1, 0) == status::ok);
        auto done = v.completions();
        REQUIRE(done.size() == 2);
        check_fault(done[0], a.pending, fault_r_domain, 0x5000);
        check_fault(done[1], b.pending, fault_r_domain, 0x5008);
        CHECK(v.dev().page_requests().size() == 1);
        CHECK(v.dev().stalled_accesses() == 1);
        CHECK(v.dev().page_request_stats().aborted == 1);
        CHECK(v.reply(1, reqs[0].id, page_reply_handled) == st::inval);
        REQUIRE(v.drv->detach(1, 1) == status::ok);  // the domain goes
        done = v.completions();
        REQUIRE(done.size() == 1);
        check_fault(done[0], c.pending, fault_r_domain, 0x5000);
        CHECK(v.dev().page_requests().empty());
        CHECK(v.dev().stalled_accesses() == 0);
        CHECK(v.reply(1, reqs[1].id, page_reply_handled) == st::inval);
    }
    SECTION("ATTACH to another domain moves the endpoint: its requests close") {
        const dma_result a = v.touch(0, 0x5000);
        REQUIRE(v.drv->attach(2, 0) == status::ok);
        auto done = v.completions();
        REQUIRE(done.size() == 1);
        check_fault(done[0], a.pending, fault_r_domain, 0x5000);
        CHECK(v.dev().page_requests().empty());
    }
    SECTION("ATTACH_TABLE over the domain: the old table's requests close, MAPPING") {
        const dma_result a = v.touch(0, 0x5000);
        const auto p = v.requests().at(0);
        auto req = sharing::make_attach_table<arm_lpae_s1_4k>(v.t->table().cfg(), pa_t{v.t->root().value}, 1);
        REQUIRE(req.ok());
        req->flags = table_f_fault;
        REQUIRE(v.drv->attach_table(1, *req) == status::ok);
        auto done = v.completions();
        REQUIRE(done.size() == 1);
        check_fault(done[0], a.pending, fault_r_mapping, 0x5000);
        CHECK(v.reply(1, p.id, page_reply_handled) == st::inval);
    }
    SECTION("INVALIDATE closes nothing") {
        (void)v.touch(0, 0x5000);
        REQUIRE(v.t->invalidate_all() == status::ok);
        REQUIRE(v.t->invalidate(0x5000, page) == status::ok);
        CHECK(v.dev().page_requests().size() == 1);
        CHECK(v.completions().empty());
    }
}

TEST_CASE("page requests: device reset and a broken queue complete every waiting access", "[virtio][page_requests]") {
    pr_vm<> v;
    const dma_result a = v.touch(0, 0x5000);
    const dma_result b = v.touch(0, 0x6000);
    SECTION("reset") {
        v.dev().reset();
        auto done = v.completions();
        REQUIRE(done.size() == 2);
        check_fault(done[0], a.pending, fault_r_domain, 0x5000);
        check_fault(done[1], b.pending, fault_r_domain, 0x6000);
        CHECK(v.dev().page_requests().empty());
        CHECK(v.dev().stalled_accesses() == 0);
    }
    SECTION("a broken requestq") {
        using M = machine<arm_host>;
        const queue_layout q = layout_at(pa_t{M::requestq_gpa}, 256, false);
        std::uint16_t idx = 0;
        REQUIRE(v.m->guest().read(pa_t{q.avail.value + 2}, &idx, 2));
        const std::uint16_t bad = 0xffff;
        REQUIRE(v.m->guest().write(pa_t{q.avail.value + 4 + 2 * std::uint64_t{idx % 256u}}, &bad, 2));
        const std::uint16_t next = static_cast<std::uint16_t>(idx + 1);
        REQUIRE(v.m->guest().write(pa_t{q.avail.value + 2}, &next, 2));
        v.dev().process_requests();
        REQUIRE(v.dev().needs_reset());
        auto done = v.completions();
        REQUIRE(done.size() == 2);
        check_fault(done[0], a.pending, fault_r_mapping, 0x5000);
        check_fault(done[1], b.pending, fault_r_mapping, 0x6000);
        CHECK(v.dev().page_requests().empty());
        // And no access stalls on a broken device.
        const dma_result c = v.touch(0, 0x7000);
        CHECK_FALSE(c.stalled());
        CHECK(c.fault);
    }
}

TEST_CASE("page requests: no event buffer, no stall", "[virtio][page_requests]") {
    machine_settings s = pr_settings();
    s.event_buffers = 1;
    pr_vm<> v(s);
    REQUIRE(v.touch(0, 0x5000).stalled());  // takes the one buffer (not re-posted: not taken)
    const dma_result r = v.touch(0, 0x6000);
    CHECK_FALSE(r.stalled());
    REQUIRE(r.fault);
    CHECK_FALSE(r.fault->delivered);
    CHECK(v.dev().page_request_stats().not_stalled == 1);
    CHECK(v.dev().page_requests().size() == 1);  // the failed one left nothing behind
    // Reading the eventq posts the buffer again: the next miss stalls.
    const auto reqs = v.requests();
    REQUIRE(reqs.size() == 1);
    CHECK(v.touch(0, 0x6000).stalled());
}

TEST_CASE("page requests: folded mode, the guest INVALIDATEs before replying", "[virtio][page_requests]") {
    pr_vm<> v(pr_settings(shared_mode::folded));
    const dma_result r = v.touch(0, 0x5000, access_kind::write);
    REQUIRE(r.stalled());
    const auto reqs = v.requests();
    REQUIRE(reqs.size() == 1);
    REQUIRE(v.serve(reqs[0], dma + 0x2000) == st::ok);  // resolve maps, INVALIDATEs, replies
    auto done = v.completions();
    REQUIRE(done.size() == 1);
    check_done(done[0], r.pending, v.hpa(dma + 0x2000));
}

TEST_CASE("page requests: the driver's parser trusts nothing", "[virtio][page_requests]") {
    page_request_event ev;
    ev.flags = fault_f_address | fault_f_read | 0x10000;
    ev.endpoint = 3;
    ev.context = 2;
    ev.address = 0x1234000;
    ev.address_space = 9;
    ev.id = 77;
    auto p = parse_page_request(ev);
    REQUIRE(p);
    CHECK(p->flags == fault_f_read);
    CHECK(p->endpoint == 3);
    CHECK(p->context == 2);
    CHECK(p->address == 0x1234000);
    CHECK(p->address_space == 9);
    CHECK(p->id == 77);
    std::array<std::uint8_t, 32> raw{};
    std::memcpy(raw.data(), &ev, 32);
    CHECK_FALSE(parse_page_request(std::span<const std::uint8_t>(raw).first(24)));
    CHECK_FALSE(parse_fault(raw));  // and a fault parser ignores it (not 24 bytes)
    auto bad = ev;
    bad.reserved[1] = 1;
    CHECK_FALSE(parse_page_request(bad));
    bad = ev;
    bad.reason = fault_r_mapping;
    CHECK_FALSE(parse_page_request(bad));
    bad = ev;
    bad.flags = fault_f_read;  // no ADDRESS
    CHECK_FALSE(parse_page_request(bad));
    // resolve refuses a request of another table without sending anything.
    pr_vm<> v;
    page_request_info other = *p;
    other.address_space = 5;
    const auto sent = v.drv->sent(req_type::page_reply);
    CHECK(v.t->resolve(other, [](const page_request_info&) { return std::optional<pr_vm<>::table_type::page_grant>{}; }) ==
          status::inval);
    CHECK(v.drv->sent(req_type::page_reply) == sent);
}

// ---------------------------------------------------------------------------------------------
// A hostile sequence against the invariants
// ---------------------------------------------------------------------------------------------

TEST_CASE("page requests: random DMA, replies, clock, DETACH and reset keep the bounds", "[virtio][page_requests]") {
    rc::prop("bounded, every token completes once", [] {
        page_request_limits lim;
        lim.per_endpoint = *rc::gen::inRange<std::uint32_t>(0, 4);
        lim.total = *rc::gen::inRange<std::uint32_t>(0, 6);
        lim.accesses = *rc::gen::inRange<std::uint32_t>(0, 10);
        lim.timeout_us = *rc::gen::inRange<std::uint64_t>(0, 100);
        machine_settings s = pr_settings(shared_mode::nested, lim);
        s.event_buffers = *rc::gen::inRange<std::uint32_t>(0, 8);
        pr_vm<> v(s);
        REQUIRE(v.drv->attach(1, 1) == status::ok);
        std::set<std::uint64_t> waiting, completed;
        std::vector<std::uint32_t> seen_ids;
        std::uint64_t now = 0;
        auto collect = [&] {
            for (const auto& c : v.completions()) {
                RC_ASSERT(waiting.erase(c.token) == 1);  // completes once, and only what stalled
                RC_ASSERT(completed.insert(c.token).second);
            }
        };
        const int steps = *rc::gen::inRange(1, 80);
        for (int i = 0; i < steps; ++i) {
            switch (*rc::gen::inRange(0, 8)) {
            case 0:
            case 1:
            case 2: {
                const std::uint32_t ep = *rc::gen::inRange<std::uint32_t>(0, 3);
                const std::uint64_t iova = *rc::gen::inRange<std::uint64_t>(0, 8) * page + *rc::gen::inRange(0, 4) * 8;
                const dma_result r = v.touch(ep, iova, *rc::gen::element(access_kind::read, access_kind::write));
                if (r.stalled()) {
                    RC_ASSERT(r.ok());
                    RC_ASSERT(waiting.insert(r.pending).second);
                }
                break;
            }
            case 3:
                for (const auto& p : v.requests()) seen_ids.push_back(p.id);
                break;
            case 4: {  // a reply: a seen id or any, any domain, any value
                const std::uint32_t id = seen_ids.empty() || *rc::gen::arbitrary<bool>()
                                             ? *rc::gen::inRange<std::uint32_t>(0, 20)
                                             : *rc::gen::elementOf(seen_ids);
                const std::uint32_t dom = *rc::gen::inRange<std::uint32_t>(0, 3);
                const std::uint32_t value = *rc::gen::inRange<std::uint32_t>(0, 3);
                const std::size_t open_before = v.dev().page_requests().size();
                const bool known = std::any_of(v.dev().page_requests().begin(), v.dev().page_requests().end(),
                                               [&](const page_request& r) { return r.id == id && r.domain == dom; });
                const status st = v.drv->page_reply(dom, id, value);
                RC_ASSERT((st == status::ok) == (known && value <= 1));
                RC_ASSERT(v.dev().page_requests().size() == open_before - (st == status::ok ? 1 : 0));
                break;
            }
            case 5:
                now += *rc::gen::inRange<std::uint64_t>(0, 60);
                v.dev().advance_clock(now);
                break;
            case 6: {
                const std::uint32_t ep = *rc::gen::inRange<std::uint32_t>(0, 2);
                if (*rc::gen::arbitrary<bool>()) (void)v.drv->detach(1, ep);
                else (void)v.drv->attach(1, ep);
                break;
            }
            case 7:
                if (*rc::gen::inRange(0, 4) == 0) {
                    v.dev().reset();
                    RC_ASSERT(v.dev().page_requests().empty());
                    collect();
                    RC_ASSERT(waiting.empty());
                    return;  // the machine's queues are gone
                }
                (void)v.m->take_events();
                break;
            }
            collect();
            const auto& open = v.dev().page_requests();
            RC_ASSERT(open.size() <= lim.total);
            RC_ASSERT(v.dev().stalled_accesses() <= lim.accesses);
            RC_ASSERT(v.dev().stalled_accesses() == waiting.size());
            for (std::uint32_t ep = 0; ep < 4; ++ep)
                RC_ASSERT(static_cast<std::uint64_t>(std::count_if(open.begin(), open.end(), [&](const page_request& r) {
                              return r.endpoint == ep;
                          })) <= lim.per_endpoint);
            for (const auto& r : open) {
                RC_ASSERT(now - std::min(now, r.posted_us) < std::max<std::uint64_t>(lim.timeout_us, 1));
                RC_ASSERT(v.dev().domain_of(r.endpoint) == std::optional<std::uint32_t>(r.domain));
            }
        }
        v.dev().advance_clock(~std::uint64_t{0});  // everything times out
        collect();
        RC_ASSERT(waiting.empty());
        RC_ASSERT(v.dev().page_requests().empty());
    });
}

TEST_CASE("page requests: PAGE_REPLY cannot be part of a group", "[virtio][page_requests]") {
    machine_settings s = pr_settings();
    s.device.features |= feature(f_grouped);
    pr_vm<> v(s);
    const page_request_info p = v.stall(0x5000);
    const std::vector<request> parts{page_reply_request(1, p.id, page_reply_handled)};
    auto g = group_request(parts);
    REQUIRE(g.ok());
    CHECK(named{v.drv->send(*g).code} == st::inval);  // a type a group may not hold: nothing done
    CHECK(v.dev().page_requests().size() == 1);
    CHECK(v.completions().empty());
    CHECK(v.reply(1, p.id, page_reply_handled) == st::ok);  // alone it is answered
    CHECK(v.completions().size() == 1);
}
