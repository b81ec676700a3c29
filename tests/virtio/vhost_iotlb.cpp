// SPDX-License-Identifier: MIT
// The vhost IOTLB service (virtio/vhost_iotlb.hpp): the wire format against Linux's
// <linux/vhost_types.h>; MISS answered with the widest contiguous range or ACCESS_FAIL and the
// device's fault event; the ordering contract (an INVALIDATE for every affected range handed
// out, written before the request that removed it completes) for every kind of removal; the
// bounds (ranges per endpoint and in all, evicted with an INVALIDATE first; leaves per UPDATE;
// frames per poll; a partial frame); a hostile backend (garbage, truncated frames, unknown
// types, flooding, a closed stream); and a backend thread over a socketpair that caches what
// it is sent and checks every DMA it makes against the device.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#define VIRTIO_RING_NO_LEGACY  // the legacy vring helpers vhost_types.h pulls in are C only
#include <linux/vhost_types.h>
#pragma GCC diagnostic pop

#include <catch2/catch.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "virtio/virtio_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using namespace virtio_test;
namespace vh = iopgtable::virtio::vhost;
using nested::access_kind;

// ---- the wire format is Linux's (facts of <linux/vhost_types.h>) ----
static_assert(sizeof(vhost_iotlb_msg) == 32);
static_assert(offsetof(vhost_iotlb_msg, iova) == vh::msg_iova_at && offsetof(vhost_iotlb_msg, size) == vh::msg_size_at &&
              offsetof(vhost_iotlb_msg, uaddr) == vh::msg_uaddr_at && offsetof(vhost_iotlb_msg, perm) == vh::msg_perm_at &&
              offsetof(vhost_iotlb_msg, type) == vh::msg_type_at);
static_assert(sizeof(vhost_msg) == vh::frame_size && sizeof(vhost_msg_v2) == vh::frame_size);
static_assert(offsetof(vhost_msg, type) == vh::frame_type_at && offsetof(vhost_msg, iotlb) == vh::frame_msg_at);
static_assert(offsetof(vhost_msg_v2, type) == vh::frame_type_at && offsetof(vhost_msg_v2, asid) == vh::frame_asid_at &&
              offsetof(vhost_msg_v2, iotlb) == vh::frame_msg_at);
static_assert(VHOST_ACCESS_RO == vh::access_ro && VHOST_ACCESS_WO == vh::access_wo && VHOST_ACCESS_RW == vh::access_rw);
static_assert(VHOST_IOTLB_MISS == vh::iotlb_miss && VHOST_IOTLB_UPDATE == vh::iotlb_update &&
              VHOST_IOTLB_INVALIDATE == vh::iotlb_invalidate && VHOST_IOTLB_ACCESS_FAIL == vh::iotlb_access_fail &&
              VHOST_IOTLB_BATCH_BEGIN == vh::iotlb_batch_begin && VHOST_IOTLB_BATCH_END == vh::iotlb_batch_end);
static_assert(VHOST_IOTLB_MSG == vh::msg_v1 && VHOST_IOTLB_MSG_V2 == vh::msg_v2);

constexpr std::uint64_t page = 0x1000;
constexpr std::uint64_t dma = machine<arm_host>::dma_gpa;
constexpr std::uint64_t host_base = 0x80000000;
constexpr std::uint64_t vmm_base = 0x7f0000000000;  // where the test's VMM maps host memory
constexpr std::uint64_t ram = 64ull << 20;
constexpr std::uint32_t rw = map_f_read | map_f_write;

std::optional<std::uint64_t> test_uaddr(std::uint64_t hpa, std::uint64_t size) {
    if (hpa < host_base || hpa - host_base >= ram || size > ram - (hpa - host_base)) return std::nullopt;
    return vmm_base + (hpa - host_base);
}
std::uint64_t uaddr_of_gpa(std::uint64_t gpa) { return vmm_base + gpa; }

vh::frame miss_frame(std::uint32_t asid, std::uint64_t iova, std::uint8_t perm, std::uint32_t version = vh::msg_v2) {
    return vh::frame{version, asid, vh::iotlb_msg{iova, 0, 0, perm, vh::iotlb_miss}};
}
vh::frame update(std::uint32_t asid, std::uint64_t iova, std::uint64_t size, std::uint64_t uaddr, std::uint8_t perm) {
    return vh::frame{vh::msg_v2, asid, vh::iotlb_msg{iova, size, uaddr, perm, vh::iotlb_update}};
}
vh::frame inval(std::uint32_t asid, std::uint64_t iova, std::uint64_t size, std::uint64_t uaddr, std::uint8_t perm) {
    return vh::frame{vh::msg_v2, asid, vh::iotlb_msg{iova, size, uaddr, perm, vh::iotlb_invalidate}};
}

std::vector<vh::frame> frames_of(const std::vector<std::uint8_t>& b) {
    REQUIRE(b.size() % vh::frame_size == 0);
    std::vector<vh::frame> out;
    for (std::size_t at = 0; at < b.size(); at += vh::frame_size)
        out.push_back(vh::decode(std::span<const std::uint8_t, vh::frame_size>(b.data() + at, vh::frame_size)));
    return out;
}

/// A memory stream that also notes, for each frame written, how many requests the device had
/// answered then: an INVALIDATE written before its request completed sees the count before it.
struct noting_stream {
    vh::memory_stream inner{1 << 20};
    const device<arm_host>* dev = nullptr;
    std::vector<std::uint64_t> answered_at_write;
    bool write_all(std::span<const std::uint8_t> b) {
        answered_at_write.push_back(dev ? dev->stats().total() : 0);
        return inner.write_all(b);
    }
    std::ptrdiff_t read_some(std::span<std::uint8_t> b) noexcept { return inner.read_some(b); }
};

/// A machine (endpoints 0–3, relaxed/grouped offered and accepted), a stream, a service.
struct rig {
    std::unique_ptr<machine<arm_host>> m;
    noting_stream stream;
    std::optional<vh::vhost_iotlb_service<arm_host, noting_stream>> svc;

    explicit rig(vh::vhost_settings vs = all_endpoints(), std::uint64_t extra_features = 0,
                 vh::uaddr_fn uaddr = test_uaddr) {
        machine_settings s;
        s.device.endpoints = 4;
        s.device.features |= extra_features;
        auto r = machine<arm_host>::create(s);
        REQUIRE(r.ok());
        m = std::move(*r);
        stream.dev = &m->dev();
        svc.emplace(m->dev(), stream, std::move(uaddr), std::move(vs));
    }
    static vh::vhost_settings all_endpoints() {
        vh::vhost_settings v;
        v.endpoints = {0, 1, 2, 3};
        return v;
    }
    device<arm_host>& dev() { return m->dev(); }
    named send(const bytes& in) {
        std::array<std::uint8_t, 4> out{};
        REQUIRE(m->submit(in, out) == 4);
        return named{static_cast<status>(out[0])};
    }
    named send(const request& r) {
        std::vector<std::uint8_t> out(r.writable_len);
        REQUIRE(m->submit(r.readable, out) == r.writable_len);
        return named{static_cast<status>(out[r.writable_len - 4])};
    }
    std::vector<vh::frame> take() {
        stream.answered_at_write.clear();
        return frames_of(stream.inner.take());
    }
    /// Sends one frame, polls, returns what the service wrote.
    std::vector<vh::frame> ask(const vh::frame& f) {
        const auto b = vh::encode(f);
        REQUIRE(stream.inner.push(b));
        REQUIRE(svc->poll() == 1);
        return take();
    }
    vh::frame miss(std::uint32_t ep, std::uint64_t iova, std::uint8_t perm) {
        auto out = ask(miss_frame(ep, iova, perm));
        REQUIRE(out.size() == 1);
        return out[0];
    }
};

TEST_CASE("vhost: frames encode and decode as Linux's struct vhost_msg / vhost_msg_v2", "[vhost]") {
    vhost_msg_v2 v2{};
    v2.type = VHOST_IOTLB_MSG_V2;
    v2.asid = 7;
    v2.iotlb.iova = 0x1234000;
    v2.iotlb.size = 0x3000;
    v2.iotlb.uaddr = 0x7f0000001000;
    v2.iotlb.perm = VHOST_ACCESS_RW;
    v2.iotlb.type = VHOST_IOTLB_UPDATE;
    const auto mine = vh::encode(update(7, 0x1234000, 0x3000, 0x7f0000001000, vh::access_rw));
    CHECK(std::memcmp(mine.data(), &v2, vh::frame_size) == 0);
    CHECK(vh::decode(mine) == update(7, 0x1234000, 0x3000, 0x7f0000001000, vh::access_rw));

    vhost_msg v1{};
    v1.type = VHOST_IOTLB_MSG;
    v1.iotlb.iova = 0x5000;
    v1.iotlb.perm = VHOST_ACCESS_RO;
    v1.iotlb.type = VHOST_IOTLB_MISS;
    const auto b1 = vh::encode(miss_frame(0, 0x5000, vh::access_ro, vh::msg_v1));
    CHECK(std::memcmp(b1.data(), &v1, vh::frame_size) == 0);
}

TEST_CASE("vhost: a MISS is answered with the widest range that translates contiguously with that permission",
          "[vhost]") {
    rig r;
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    // IOVA 0x10000..0x12fff → GPA dma..dma+0x2fff (RW); 0x13000 → dma+0x3000 read-only;
    // 0x14000 → elsewhere (not contiguous); 0xf000 unmapped.
    REQUIRE(r.send(map(1, 0x10000, 0x12fff, dma)) == st::ok);
    REQUIRE(r.send(map(1, 0x13000, 0x13fff, dma + 0x3000, map_f_read)) == st::ok);
    REQUIRE(r.send(map(1, 0x14000, 0x14fff, dma + 0x100000)) == st::ok);
    CHECK(r.miss(0, 0x11234, vh::access_ro) == update(0, 0x10000, 0x4000, uaddr_of_gpa(dma), vh::access_ro));
    CHECK(r.miss(0, 0x11234, vh::access_wo) == update(0, 0x10000, 0x3000, uaddr_of_gpa(dma), vh::access_wo));
    CHECK(r.miss(0, 0x12fff, vh::access_rw) == update(0, 0x10000, 0x3000, uaddr_of_gpa(dma), vh::access_rw));
    CHECK(r.miss(0, 0x14000, vh::access_rw) == update(0, 0x14000, 0x1000, uaddr_of_gpa(dma + 0x100000), vh::access_rw));
    CHECK(r.svc->ranges() == 4);
    CHECK(r.svc->stats().updates == 4);
    // The same question again: the same answer, remembered once.
    CHECK(r.miss(0, 0x10000, vh::access_ro) == update(0, 0x10000, 0x4000, uaddr_of_gpa(dma), vh::access_ro));
    CHECK(r.svc->ranges() == 4);
    CHECK(r.svc->stats().repeats == 1);

    SECTION("a VMM address that is not contiguous ends the range") {
        rig q;
        REQUIRE(q.send(attach(1, 0)) == st::ok);
        REQUIRE(q.send(map(1, 0x10000, 0x13fff, dma)) == st::ok);
        // A VMM whose mapping of host memory breaks at dma + 0x2000.
        vh::memory_stream s;
        q.svc.reset();
        vh::vhost_iotlb_service<arm_host, vh::memory_stream> svc(
            q.dev(), s,
            [](std::uint64_t hpa, std::uint64_t size) -> std::optional<std::uint64_t> {
                const std::uint64_t at = hpa - host_base;
                return at + size <= dma + 0x2000 ? vmm_base + at : 0x100000000000 + at;
            },
            rig::all_endpoints());
        REQUIRE(s.push(vh::encode(miss_frame(0, 0x10000, vh::access_ro))));
        REQUIRE(svc.poll() == 1);
        CHECK(frames_of(s.take()) ==
              std::vector<vh::frame>{update(0, 0x10000, 0x2000, uaddr_of_gpa(dma), vh::access_ro)});
    }
}

TEST_CASE("vhost: an UPDATE spans at most max_leaves leaves on each side of the missed one", "[vhost]") {
    vh::vhost_settings vs = rig::all_endpoints();
    vs.max_leaves = 2;
    rig r(vs);
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(map(1, 0x100000, 0x1fffff, dma)) == st::ok);  // 256 pages, one contiguous run
    CHECK(r.miss(0, 0x180000, vh::access_ro) ==
          update(0, 0x17e000, 0x5000, uaddr_of_gpa(dma + 0x7e000), vh::access_ro));
}

TEST_CASE("vhost: bypass is the identity through stage 2, handed out like any range", "[vhost]") {
    rig r;
    REQUIRE(r.dev().write_config(offsetof(config, bypass), std::array<std::uint8_t, 1>{1}));
    // Stage 2 maps all of guest RAM with blocks: the range is bounded by the leaf budget.
    const vh::frame u = r.miss(2, 0x3000000, vh::access_rw);
    CHECK(u.msg.type == vh::iotlb_update);
    CHECK(u.msg.iova <= 0x3000000);
    CHECK(u.msg.iova + u.msg.size > 0x3000000);
    CHECK(u.msg.uaddr == uaddr_of_gpa(u.msg.iova));
    CHECK(u.msg.iova + u.msg.size <= ram);
}

TEST_CASE("vhost: a MISS that faults is answered ACCESS_FAIL after the fault event the device posts", "[vhost]") {
    rig r;
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x10fff, dma, map_f_read)) == st::ok);
    const vh::frame fail{vh::msg_v2, 0, vh::iotlb_msg{0x10008, 0, 0, vh::access_wo, vh::iotlb_access_fail}};
    CHECK(r.miss(0, 0x10008, vh::access_wo) == fail);  // read-only
    auto ev = r.m->take_events();
    REQUIRE(ev.size() == 1);
    CHECK(ev[0].reason == fault_r_mapping);
    CHECK(ev[0].flags.get() == (fault_f_write | fault_f_address));
    CHECK(ev[0].address.get() == 0x10008);
    CHECK(r.miss(0, 0x20000, vh::access_ro).msg.type == vh::iotlb_access_fail);  // unmapped
    CHECK(r.miss(1, 0x20000, vh::access_ro).msg.type == vh::iotlb_access_fail);  // endpoint in no domain
    ev = r.m->take_events();
    REQUIRE(ev.size() == 2);
    CHECK(ev[1].reason == fault_r_domain);
    CHECK(r.svc->ranges() == 0);
    CHECK(r.svc->stats().access_fails == 3);
}

TEST_CASE("vhost: a MISS that translates to host memory the VMM has no address for is answered ACCESS_FAIL",
          "[vhost]") {
    // The VMM maps only the first 64 KiB of host memory into its address space.
    rig r(rig::all_endpoints(), 0, [](std::uint64_t hpa, std::uint64_t size) -> std::optional<std::uint64_t> {
        if (hpa < host_base || hpa - host_base >= 0x10000 || size > 0x10000 - (hpa - host_base)) return std::nullopt;
        return vmm_base + (hpa - host_base);
    });
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x10fff, dma, rw)) == st::ok);
    CHECK(r.miss(0, 0x10008, vh::access_rw) ==
          vh::frame{vh::msg_v2, 0, vh::iotlb_msg{0x10008, 0, 0, vh::access_rw, vh::iotlb_access_fail}});
    CHECK(r.svc->ranges() == 0);
    CHECK(r.svc->stats().access_fails == 1);
    CHECK(r.m->take_events().empty());  // the translation itself did not fault
}

TEST_CASE("vhost: malformed frames get an error reply (ACCESS_FAIL, perm 0) and change nothing; unknown envelopes "
          "are dropped",
          "[vhost]") {
    vh::vhost_settings vs;
    vs.endpoints = {1};
    vs.v1_endpoint = std::nullopt;
    rig r(vs);
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(attach(2, 1)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x10fff, dma)) == st::ok);
    const auto before = r.dev().dma_stats().translations;
    auto error_for = [](const vh::frame& f) {
        return vh::frame{f.version, f.asid, vh::iotlb_msg{f.msg.iova, 0, 0, 0, vh::iotlb_access_fail}};
    };
    std::vector<vh::frame> bad{
        miss_frame(0, 0x10000, vh::access_ro),                 // endpoint 0 not granted
        miss_frame(9, 0x10000, vh::access_ro),                 // no such endpoint
        miss_frame(0, 0x10000, vh::access_ro, vh::msg_v1),     // v1 without a v1 endpoint
        miss_frame(1, 0x10000, 0),                             // perm 0
        miss_frame(1, 0x10000, 4),                             // perm beyond RW
        update(1, 0x10000, 0x1000, 0x1234, vh::access_rw),     // a backend may not UPDATE
        inval(1, 0x10000, 0x1000, 0, vh::access_rw),           // nor INVALIDATE
        vh::frame{vh::msg_v2, 1, vh::iotlb_msg{0x10000, 0, 0, 1, vh::iotlb_access_fail}},
        vh::frame{vh::msg_v2, 1, vh::iotlb_msg{0, 0, 0, 0, vh::iotlb_batch_begin}},
        vh::frame{vh::msg_v2, 1, vh::iotlb_msg{0, 0, 0, 0, vh::iotlb_batch_end}},
        vh::frame{vh::msg_v2, 1, vh::iotlb_msg{0, 0, 0, 1, 0}},
        vh::frame{vh::msg_v2, 1, vh::iotlb_msg{0, 0, 0, 1, 0xff}},
    };
    for (const auto& f : bad) {
        CAPTURE(f.version, f.asid, f.msg.type, f.msg.perm);
        CHECK(r.ask(f) == std::vector<vh::frame>{error_for(f)});
    }
    CHECK(r.svc->stats().errors == bad.size());
    // Unknown envelope types: nothing to answer in, dropped.
    for (const std::uint32_t v : {0u, 3u, 0xffffffffu}) CHECK(r.ask(vh::frame{v, 1, miss_frame(1, 0, 1).msg}).empty());
    CHECK(r.svc->stats().dropped == 3);
    CHECK(r.dev().dma_stats().translations == before);  // nothing reached the device
    CHECK(r.m->take_events().empty());
    CHECK(r.svc->ranges() == 0);
    CHECK(r.svc->current() == vh::vhost_iotlb_service<arm_host, noting_stream>::state::open);
    // v1 frames name v1_endpoint.
    vh::vhost_settings v1;
    v1.endpoints = {};
    v1.v1_endpoint = 0;
    rig q(v1);
    REQUIRE(q.send(attach(1, 0)) == st::ok);
    REQUIRE(q.send(map(1, 0x10000, 0x10fff, dma)) == st::ok);
    CHECK(q.ask(miss_frame(0, 0x10000, 1, vh::msg_v1)) ==
          std::vector<vh::frame>{vh::frame{vh::msg_v1, 0, vh::iotlb_msg{0x10000, 0x1000, uaddr_of_gpa(dma), 1, vh::iotlb_update}}});
    CHECK(q.ask(miss_frame(0, 0x10000, 1)).at(0).msg.perm == 0);  // v2 asid 0 not granted
}

// ---- the ordering contract ----

/// Each removal, with what it must invalidate: the INVALIDATEs are in the stream when the
/// request completes, and were written before the device answered it.
TEST_CASE("vhost: every removal sends INVALIDATE for each affected range before its request completes", "[vhost]") {
    rig r(rig::all_endpoints(), feature(f_relaxed) | feature(f_grouped));
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(attach(1, 1)) == st::ok);
    REQUIRE(r.send(attach(2, 2)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x11fff, dma)) == st::ok);
    REQUIRE(r.send(map(1, 0x20000, 0x20fff, dma + 0x10000)) == st::ok);
    REQUIRE(r.send(map(2, 0x10000, 0x10fff, dma + 0x20000)) == st::ok);
    const auto a0 = r.miss(0, 0x10000, vh::access_rw);  // [0x10000, 0x11fff] of endpoint 0
    const auto b0 = r.miss(0, 0x20000, vh::access_ro);
    const auto a1 = r.miss(1, 0x11000, vh::access_ro);  // the same domain through endpoint 1
    const auto c2 = r.miss(2, 0x10000, vh::access_ro);
    REQUIRE(r.svc->ranges() == 4);
    auto as_inval = [](const vh::frame& u) {
        vh::frame f = u;
        f.msg.type = vh::iotlb_invalidate;
        return f;
    };
    // Sends `req`, and checks that exactly `expect` was written, every frame before the answer.
    auto removal = [&](auto&& req, std::vector<vh::frame> expect, named want = st::ok) {
        const auto answered = r.dev().stats().total();
        r.stream.answered_at_write.clear();
        const named s = r.send(req);
        CHECK(s == want);
        const auto at = r.stream.answered_at_write;
        auto got = frames_of(r.stream.inner.take());
        std::sort(got.begin(), got.end(), [](auto& x, auto& y) { return x.asid < y.asid || (x.asid == y.asid && x.msg.iova < y.msg.iova); });
        CHECK(got == expect);
        for (auto n : at) CHECK(n == answered);  // written while the request was not yet answered
    };

    SECTION("UNMAP: the ranges it overlaps, of every endpoint of the domain") {
        removal(unmap(1, 0x11000, 0x11fff), {as_inval(a0), as_inval(a1)});
        CHECK(r.svc->ranges() == 2);
        removal(unmap(1, 0x30000, 0x30fff), {});  // nothing there: nothing sent
    }
    SECTION("DETACH: the endpoint's ranges") {
        removal(detach(1, 0), {as_inval(a0), as_inval(b0)});
        CHECK(r.svc->ranges_of(1) == 1);
    }
    SECTION("ATTACH that moves an endpoint: its ranges") { removal(attach(2, 1), {as_inval(a1)}); }
    SECTION("relaxed MAP replacing a mapping: the ranges it overlaps") {
        removal(map(1, 0x20000, 0x20fff, dma + 0x40000), {as_inval(b0)});
    }
    SECTION("relaxed UNMAP") { removal(unmap(2, 0x10000, 0x10fff), {as_inval(c2)}); }
    SECTION("a group that fails is rolled back: what it touched is invalidated") {
        std::vector<request> parts{unmap_request(2, 0x10000, 0x10fff), unmap_request(7, 0, 0xfff)};  // 2nd: NOENT
        auto g = group_request(parts);
        REQUIRE(g.ok());
        std::vector<std::uint8_t> out(4);
        REQUIRE(r.m->submit(g->readable, out) == 4);
        CHECK(out[0] == static_cast<std::uint8_t>(status::noent));
        // The first member's UNMAP took c2 away (sent then); the rollback brought the mapping
        // back, which needs no invalidation.
        CHECK(frames_of(r.stream.inner.take()) == std::vector<vh::frame>{as_inval(c2)});
        CHECK(r.svc->ranges() == 3);
    }
    SECTION("bypass byte changes, and only changes") {
        REQUIRE(r.dev().write_config(offsetof(config, bypass), std::array<std::uint8_t, 1>{0}));
        CHECK(r.take().empty());
        REQUIRE(r.dev().write_config(offsetof(config, bypass), std::array<std::uint8_t, 1>{1}));
        CHECK(r.take().size() == 4);
        CHECK(r.svc->ranges() == 0);
    }
    SECTION("stage 2 changes") {
        r.dev().stage2_changed(dma, page);
        CHECK(r.take().size() == 4);
    }
    SECTION("device reset") {
        r.dev().reset();
        CHECK(r.take().size() == 4);
        CHECK(r.svc->ranges() == 0);
    }
    SECTION("a refused request removes nothing and sends nothing") {
        removal(unmap(9, 0x10000, 0x10fff), {}, st::noent);
        CHECK(r.svc->ranges() == 4);
    }
}

template <class Host, class S1>
struct guest_table {
    using gmem_type = nested::guest_table_memory<typename Host::stage2_format, guest_ram>;
    gmem_type gmem;
    std::optional<page_table<S1, gmem_type>> pt;
    explicit guest_table(machine<Host>& m)
        : gmem(m.stage2_table(), ipa_t{machine<Host>::table_window_gpa}, machine<Host>::table_window_size / 2) {
        auto t = page_table<S1, gmem_type>::create({}, gmem);
        REQUIRE(t.ok());
        pt.emplace(std::move(*t));
    }
};

TEST_CASE("vhost: shared tables: INVALIDATE VADDR, SINGLE and a new ATTACH_TABLE send INVALIDATE first", "[vhost]") {
    for (const auto mode : {shared_mode::nested, shared_mode::folded}) {
        machine_settings s;
        s.device.endpoints = 2;
        s.device.sharing = mode;
        auto made = machine<arm_host>::create(s);
        REQUIRE(made.ok());
        auto& m = **made;
        vh::memory_stream stream;
        vh::vhost_iotlb_service<arm_host, vh::memory_stream> svc(m.dev(), stream, test_uaddr, rig::all_endpoints());
        auto send = [&](const bytes& in) {
            std::array<std::uint8_t, 4> out{};
            REQUIRE(m.submit(in, out) == 4);
            return named{static_cast<status>(out[0])};
        };
        guest_table<arm_host, arm_lpae_s1_4k> g(m);
        const prot p = prot::read | prot::write | prot::cache;
        REQUIRE(g.pt->map(arm_lpae_s1_4k::input_address{0x40000}, pa_t{dma}, length_t{0x2000}, p).ok());
        REQUIRE(g.pt->map(arm_lpae_s1_4k::input_address{0x80000}, pa_t{dma + 0x8000}, length_t{0x1000}, p).ok());
        REQUIRE(send(attach(1, 0)) == st::ok);
        auto at = sharing::make_attach_table<arm_lpae_s1_4k>(g.pt->cfg(), pa_t{g.pt->root().value}, 1);
        REQUIRE(at.ok());
        at->address_space = 1;
        REQUIRE(send(readable(*at)) == st::ok);
        auto ask = [&](std::uint64_t iova) {
            REQUIRE(stream.push(vh::encode(miss_frame(0, iova, vh::access_ro))));
            REQUIRE(svc.poll() == 1);
            auto f = frames_of(stream.take());
            REQUIRE(f.size() == 1);
            return f[0];
        };
        CHECK(ask(0x41000) == update(0, 0x40000, 0x2000, uaddr_of_gpa(dma), vh::access_ro));
        CHECK(ask(0x80000) == update(0, 0x80000, 0x1000, uaddr_of_gpa(dma + 0x8000), vh::access_ro));
        // The guest unmaps 0x40000 and invalidates by address: that range only.
        REQUIRE(g.pt->unmap(arm_lpae_s1_4k::input_address{0x40000}, length_t{0x2000}).ok());
        REQUIRE(send(invalidate(1, static_cast<std::uint32_t>(invalidate_kind::vaddr), 0x40000, 0x2000)) == st::ok);
        CHECK(frames_of(stream.take()) == std::vector<vh::frame>{inval(0, 0x40000, 0x2000, uaddr_of_gpa(dma), vh::access_ro)});
        REQUIRE(send(invalidate(1, static_cast<std::uint32_t>(invalidate_kind::single))) == st::ok);
        CHECK(frames_of(stream.take()) ==
              std::vector<vh::frame>{inval(0, 0x80000, 0x1000, uaddr_of_gpa(dma + 0x8000), vh::access_ro)});
        CHECK(ask(0x80000).msg.type == vh::iotlb_update);
        REQUIRE(send(readable(*at)) == st::ok);  // a new ATTACH_TABLE: the whole domain
        CHECK(frames_of(stream.take()).size() == 1);
        CHECK(svc.ranges() == 0);
    }
}

// ---- bounds ----

TEST_CASE("vhost: ranges are bounded per endpoint and in all; the oldest goes with an INVALIDATE first", "[vhost]") {
    vh::vhost_settings vs = rig::all_endpoints();
    vs.max_ranges_per_endpoint = 2;
    vs.max_ranges = 3;
    rig r(vs);
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(attach(2, 1)) == st::ok);
    for (std::uint32_t d : {1u, 2u})
        for (std::uint64_t i = 0; i < 4; ++i)  // separate runs: every other page
            REQUIRE(r.send(map(d, 0x10000 + 2 * i * page, 0x10fff + 2 * i * page, dma + (d * 16 + 2 * i) * page)) == st::ok);
    auto range = [&](std::uint32_t ep, std::uint64_t i) {
        return update(ep, 0x10000 + 2 * i * page, page, uaddr_of_gpa(dma + ((ep + 1) * 16 + 2 * i) * page), vh::access_ro);
    };
    auto invalidate_of = [](vh::frame u) {
        u.msg.type = vh::iotlb_invalidate;
        return u;
    };
    CHECK(r.ask(miss_frame(0, 0x10000, 1)) == std::vector<vh::frame>{range(0, 0)});
    CHECK(r.ask(miss_frame(0, 0x12000, 1)) == std::vector<vh::frame>{range(0, 1)});
    // Endpoint 0 is full: its oldest goes first, then the UPDATE.
    CHECK(r.ask(miss_frame(0, 0x14000, 1)) == std::vector<vh::frame>{invalidate_of(range(0, 0)), range(0, 2)});
    CHECK(r.svc->ranges_of(0) == 2);
    CHECK(r.ask(miss_frame(1, 0x10000, 1)) == std::vector<vh::frame>{range(1, 0)});
    // Three in all: the oldest of all (endpoint 0's range 1) goes.
    CHECK(r.ask(miss_frame(1, 0x12000, 1)) == std::vector<vh::frame>{invalidate_of(range(0, 1)), range(1, 1)});
    CHECK(r.svc->ranges() == 3);
    CHECK(r.svc->stats().evictions == 2);
    // A later UNMAP invalidates only what is still remembered.
    CHECK(r.send(unmap(1, 0x10000, 0x1ffff)) == st::ok);
    CHECK(r.take() == std::vector<vh::frame>{invalidate_of(range(0, 2))});
}

TEST_CASE("vhost: one poll handles at most max_frames_per_poll frames; a partial frame waits", "[vhost]") {
    vh::vhost_settings vs = rig::all_endpoints();
    vs.max_frames_per_poll = 3;
    rig r(vs);
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x10fff, dma)) == st::ok);
    std::vector<std::uint8_t> bytes;
    for (int i = 0; i < 5; ++i) {
        const auto f = vh::encode(miss_frame(0, 0x10000, 1));
        bytes.insert(bytes.end(), f.begin(), f.end());
    }
    // Five frames and 10 bytes of a sixth.
    const auto sixth = vh::encode(miss_frame(0, 0x10000, 2));
    bytes.insert(bytes.end(), sixth.begin(), sixth.begin() + 10);
    REQUIRE(r.stream.inner.push(bytes));
    CHECK(r.svc->poll() == 3);
    CHECK(r.take().size() == 3);
    CHECK(r.svc->poll() == 2);
    CHECK(r.take().size() == 2);
    CHECK(r.svc->poll() == 0);  // the partial frame waits
    CHECK(r.take().empty());
    // Byte by byte, the rest of it.
    for (std::size_t i = 10; i < vh::frame_size; ++i) {
        REQUIRE(r.stream.inner.push(std::span(sixth).subspan(i, 1)));
        CHECK(r.svc->poll() == (i + 1 == vh::frame_size ? 1u : 0u));
    }
    CHECK(r.take() == std::vector<vh::frame>{update(0, 0x10000, page, uaddr_of_gpa(dma), vh::access_wo)});
}

// ---- hostile backends ----

TEST_CASE("vhost: a backend that floods without reading breaks the service, within the stream's bounds", "[vhost]") {
    SECTION("memory stream: a reply that does not fit") {
        machine_settings s;
        auto made = machine<arm_host>::create(s);
        REQUIRE(made.ok());
        auto& m = **made;
        vh::memory_stream stream(10 * vh::frame_size);
        vh::vhost_iotlb_service<arm_host, vh::memory_stream> svc(m.dev(), stream, test_uaddr);
        std::vector<std::uint8_t> flood;
        for (int i = 0; i < 10; ++i) {
            const auto f = vh::encode(miss_frame(0, 0x1000 * i, 1));
            flood.insert(flood.end(), f.begin(), f.end());
        }
        REQUIRE(stream.push(flood));
        CHECK(svc.poll() == 10);  // ten replies fill the stream
        CHECK(svc.current() == vh::vhost_iotlb_service<arm_host, vh::memory_stream>::state::open);
        REQUIRE(stream.push(vh::encode(miss_frame(0, 0, 1))));
        CHECK(svc.poll() == 1);  // the eleventh does not fit
        CHECK(svc.current() == vh::vhost_iotlb_service<arm_host, vh::memory_stream>::state::broken);
        CHECK(stream.pending_out() == 10 * vh::frame_size);  // nothing half-written
        REQUIRE(stream.push(vh::encode(miss_frame(0, 0, 1))));
        CHECK(svc.poll() == 0);  // broken: nothing more is read or answered
        CHECK(svc.ranges() == 0);
    }
    SECTION("socketpair: the write times out and the service is broken, never blocked for long") {
        machine_settings s;
        auto made = machine<arm_host>::create(s);
        REQUIRE(made.ok());
        auto& m = **made;
        REQUIRE(m.dev().write_config(offsetof(config, bypass), std::array<std::uint8_t, 1>{1}));
        auto pair = vh::socket_stream::make_pair(20);
        REQUIRE(pair);
        auto& [mine, backend] = *pair;
        vh::vhost_iotlb_service<arm_host, vh::socket_stream> svc(m.dev(), mine, test_uaddr);
        const auto f = vh::encode(miss_frame(0, 0x1000, 1));
        const auto t0 = std::chrono::steady_clock::now();
        std::size_t rounds = 0;
        while (svc.current() == vh::vhost_iotlb_service<arm_host, vh::socket_stream>::state::open && rounds < 100000) {
            ++rounds;
            for (int i = 0; i < 64; ++i)  // as much as fits, never waiting
                if (::send(backend.fd(), f.data(), f.size(), MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(f.size()))
                    break;
            svc.poll();
        }
        CHECK(svc.current() == vh::vhost_iotlb_service<arm_host, vh::socket_stream>::state::broken);
        CHECK(svc.ranges() == 0);
        CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    }
}

TEST_CASE("vhost: a closed stream closes the service and forgets its ranges", "[vhost]") {
    rig r;
    REQUIRE(r.send(attach(1, 0)) == st::ok);
    REQUIRE(r.send(map(1, 0x10000, 0x10fff, dma)) == st::ok);
    CHECK(r.miss(0, 0x10000, 1).msg.type == vh::iotlb_update);
    r.stream.inner.close();
    CHECK(r.svc->poll() == 0);
    CHECK(r.svc->current() == vh::vhost_iotlb_service<arm_host, noting_stream>::state::closed);
    CHECK(r.svc->ranges() == 0);
    CHECK(r.send(unmap(1, 0x10000, 0x10fff)) == st::ok);  // nothing to tell, nothing written
}

TEST_CASE("vhost: any byte stream: no crash, replies are whole frames of the right kinds, bounds hold", "[vhost]") {
    rc::prop("hostile chunks", [](const std::vector<std::vector<std::uint8_t>>& chunks, std::uint8_t seed) {
        vh::vhost_settings vs = rig::all_endpoints();
        vs.max_ranges = 5;
        vs.max_ranges_per_endpoint = 3;
        vs.max_leaves = 4;
        rig r(vs);
        RC_ASSERT(r.send(attach(1, 0)) == st::ok);
        RC_ASSERT(r.send(map(1, 0, 0x1fffff, dma)) == st::ok);
        RC_ASSERT(r.dev().write_config(offsetof(config, bypass), std::array<std::uint8_t, 1>{1}));
        std::mt19937 rng(seed);
        for (const auto& c : chunks) {
            std::vector<std::uint8_t> b = c;
            // Often a well-formed MISS with a few fields from the input.
            if (!b.empty() && (b[0] & 1)) {
                const auto f = vh::encode(miss_frame(b[0] >> 6, std::uint64_t{b.size() > 1 ? b[1] : 0u} << 12,
                                                     static_cast<std::uint8_t>(1 + (b[0] >> 1) % 3)));
                b.assign(f.begin(), f.end());
                b.resize(rng() % (vh::frame_size + 1));  // sometimes truncated
            }
            RC_ASSERT(r.stream.inner.push(b));
            r.svc->poll();
            if (rng() % 4 == 0) r.send(unmap(1, 0, 0xfffff));
            if (rng() % 4 == 0) r.send(map(1, 0, 0xfffff, dma));  // INVAL while mapped: fine
            RC_ASSERT(r.svc->ranges() <= 5);
            for (std::uint32_t ep = 0; ep < 4; ++ep) RC_ASSERT(r.svc->ranges_of(ep) <= 3);
            for (const auto& f : r.take()) {
                RC_ASSERT(f.version == vh::msg_v1 || f.version == vh::msg_v2);
                const bool known = f.msg.type == vh::iotlb_update || f.msg.type == vh::iotlb_invalidate ||
                                   f.msg.type == vh::iotlb_access_fail;
                RC_ASSERT(known);
                if (f.msg.type != vh::iotlb_access_fail) RC_ASSERT(f.msg.size != 0);
                if (f.msg.type == vh::iotlb_update) RC_ASSERT(f.msg.size <= 9 * 0x200000);
            }
        }
        using svc_type = vh::vhost_iotlb_service<arm_host, noting_stream>;
        RC_ASSERT(r.svc->current() == svc_type::state::open);
    });
}

// ---- a backend thread over a socketpair ----

/// Counts what the service wrote, so the test can tell the backend how far to read: every
/// byte written before a request completed must be applied before the backend's next DMA.
struct counting_stream {
    vh::socket_stream s;
    std::uint64_t written = 0;
    bool write_all(std::span<const std::uint8_t> b) {
        if (!s.write_all(b)) return false;
        written += b.size();
        return true;
    }
    std::ptrdiff_t read_some(std::span<std::uint8_t> b) noexcept { return s.read_some(b); }
};

struct dma_order {
    std::uint32_t ep = 0;
    std::uint64_t iova = 0;
    std::uint8_t perm = 0;
    std::uint64_t barrier = 0;  ///< bytes of the stream to apply first
    bool quit = false;
};
struct dma_done {
    std::optional<std::uint64_t> uaddr;  ///< nothing: the backend was refused (ACCESS_FAIL)
    bool used_cache = false;
};

/// The backend: applies every frame in order to its cache; for each DMA order, reads the
/// stream up to the barrier, then uses its cache or sends a MISS and waits for the answer.
void backend_thread(int fd, std::mutex& mu, std::condition_variable& cv, std::optional<dma_order>& order,
                    std::optional<dma_done>& done, std::atomic<bool>& failed) {
    vh::backend_cache cache(16);
    std::uint64_t consumed = 0;
    auto read_frame = [&]() -> std::optional<vh::frame> {
        vh::frame_bytes b{};
        std::size_t have = 0;
        while (have < b.size()) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 2000) <= 0) return std::nullopt;
            const ssize_t n = ::recv(fd, b.data() + have, b.size() - have, 0);
            if (n <= 0) return std::nullopt;
            have += static_cast<std::size_t>(n);
        }
        consumed += b.size();
        return vh::decode(b);
    };
    for (;;) {
        dma_order o;
        {
            std::unique_lock lk(mu);
            cv.wait(lk, [&] { return order.has_value(); });
            o = *order;
            order.reset();
        }
        if (o.quit) return;
        dma_done d;
        while (consumed < o.barrier) {
            auto f = read_frame();
            if (!f) return failed.store(true);
            cache.apply(*f);
        }
        if (auto u = cache.lookup(o.ep, o.iova, o.perm)) {
            d.uaddr = u;
            d.used_cache = true;
        } else {
            const auto m = vh::encode(miss_frame(o.ep, o.iova, o.perm));
            if (::send(fd, m.data(), m.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(m.size())) return failed.store(true);
            for (;;) {
                auto f = read_frame();
                if (!f) return failed.store(true);
                cache.apply(*f);
                if (f->msg.type == vh::iotlb_update || f->msg.type == vh::iotlb_access_fail) {
                    if (f->msg.type == vh::iotlb_update) d.uaddr = cache.lookup(o.ep, o.iova, o.perm);
                    break;
                }
            }
        }
        {
            std::lock_guard lk(mu);
            done = d;
        }
        cv.notify_all();
    }
}

TEST_CASE("vhost: a backend thread that caches translations never uses one the guest removed (socketpair)",
          "[vhost][vhost-thread]") {
    machine_settings s;
    s.device.endpoints = 2;
    s.device.features |= feature(f_relaxed);
    auto made = machine<arm_host>::create(s);
    REQUIRE(made.ok());
    auto& m = **made;
    auto pair = vh::socket_stream::make_pair(1000);
    REQUIRE(pair);
    counting_stream stream{std::move(pair->first)};
    vh::socket_stream backend_end = std::move(pair->second);
    vh::vhost_settings vs;
    vs.endpoints = {0, 1};
    vs.max_ranges = 12;
    vs.max_ranges_per_endpoint = 8;
    vh::vhost_iotlb_service<arm_host, counting_stream> svc(m.dev(), stream, test_uaddr, vs);

    std::mutex mu;
    std::condition_variable cv;
    std::optional<dma_order> order;
    std::optional<dma_done> done;
    std::atomic<bool> failed{false};
    std::thread backend(backend_thread, backend_end.fd(), std::ref(mu), std::ref(cv), std::ref(order), std::ref(done),
                        std::ref(failed));
    // However the test ends (a failed REQUIRE throws), the backend is told to quit and joined.
    struct stopper {
        std::thread& t;
        std::mutex& mu;
        std::condition_variable& cv;
        std::optional<dma_order>& order;
        // A constructor, not parenthesized aggregate initialization (clang 14 lacks it).
        stopper(std::thread& t_, std::mutex& mu_, std::condition_variable& cv_, std::optional<dma_order>& order_)
            : t(t_), mu(mu_), cv(cv_), order(order_) {}
        stopper(const stopper&) = delete;
        stopper& operator=(const stopper&) = delete;
        ~stopper() {
            {
                std::lock_guard lk(mu);
                order = dma_order{0, 0, 0, 0, true};
            }
            cv.notify_all();
            t.join();
        }
    };
    std::optional<stopper> stop;
    stop.emplace(backend, mu, cv, order);

    auto send = [&](const bytes& in) {
        std::array<std::uint8_t, 4> out{};
        return m.submit(in, out) == 4 ? static_cast<status>(out[0]) : status::ioerr;
    };
    std::mt19937 rng(14);
    constexpr std::uint64_t window = 0x10000;  // 16 pages of IOVA: the backend's DMA lands there
    std::uint64_t hits = 0, dmas = 0, removals_checked = 0;
    for (int step = 0; step < 400 && !failed; ++step) {
        // The guest (or the VMM) changes something.
        const std::uint32_t dom = 1 + rng() % 2, ep = rng() % 2;
        const std::uint64_t first = window + (rng() % 16) * page, len = (1 + rng() % 4) * page;
        switch (rng() % 8) {
        case 0: case 1: case 2: {
            // One draw per statement: the order in which a call's arguments are evaluated is
            // unspecified (g++ and clang differ), and the sequence must not depend on it.
            const std::uint64_t to = dma + (rng() % 64) * page;
            const auto flags = rng() % 4 == 0 ? map_f_read : rw;
            send(map(dom, first, first + len - 1, to, flags));
            break;
        }
        case 3: case 4: send(unmap(dom, first, first + len - 1)); ++removals_checked; break;
        case 5: send(rng() % 3 == 0 ? detach(dom, ep) : attach(dom, ep)); break;
        case 6: {
            const std::uint8_t b = rng() % 2;
            m.dev().write_config(offsetof(config, bypass), std::span(&b, 1));
            break;
        }
        case 7: if (rng() % 8 == 0) m.dev().stage2_changed(dma, page); break;
        }
        // The backend makes a few DMAs, each checked against the device afterwards.
        for (int k = 0; k < 3; ++k) {
            dma_order o;
            o.ep = rng() % 2;
            o.iova = window + (rng() % 16) * page;
            o.iova += rng() % page;
            o.perm = static_cast<std::uint8_t>(1 + rng() % 3);
            o.barrier = stream.written;
            {
                std::lock_guard lk(mu);
                order = o;
                done.reset();
            }
            cv.notify_all();
            std::optional<dma_done> d;
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
            while (!d && !failed && std::chrono::steady_clock::now() < deadline) {
                svc.poll();
                std::unique_lock lk(mu);
                cv.wait_for(lk, std::chrono::microseconds(200), [&] { return done.has_value(); });
                d = done;
            }
            REQUIRE(d);
            ++dmas;
            hits += d->used_cache;
            // The device's answer now (no change since the backend's DMA).
            std::optional<std::uint64_t> expect;
            dma_result rr = m.dev().translate(o.ep, o.iova, 1, access_kind::read);
            dma_result rwr = m.dev().translate(o.ep, o.iova, 1, access_kind::write);
            const bool ok = (!(o.perm & 1) || rr.ok()) && (!(o.perm & 2) || rwr.ok());
            if (ok) expect = test_uaddr(((o.perm & 1) ? rr : rwr).ranges[0].hpa, 1);
            CAPTURE(step, k, o.ep, o.iova, int(o.perm), d->used_cache);
            REQUIRE(d->uaddr == expect);
        }
        (void)m.take_events();
    }
    stop.reset();
    CHECK_FALSE(failed);
    CHECK(dmas == 1200);
    CHECK(hits > 50);  // the cache was used, so staleness was possible (95 of the 1,200 with this seed)
    CHECK(svc.stats().invalidates > 50);
    CHECK(removals_checked > 50);
}

} // namespace

// ---- the backend's helpers on their own ----

TEST_CASE("vhost: backend_cache keeps UPDATEs, drops what an INVALIDATE covers, forgets the oldest when full",
          "[vhost]") {
    vh::backend_cache cache(2);
    cache.apply(update(1, 0x10000, 0x2000, 0x7000'0000, vh::access_rw));
    cache.apply(update(2, 0x10000, 0x1000, 0x7100'0000, vh::access_ro));
    cache.apply(update(1, 0x20000, 0, 0x7200'0000, vh::access_rw));  // size 0: nothing
    CHECK(cache.size() == 2);
    CHECK(cache.lookup(1, 0x11234, vh::access_wo) == std::optional<std::uint64_t>{0x7000'1234});
    CHECK(cache.lookup(2, 0x10010, vh::access_ro) == std::optional<std::uint64_t>{0x7100'0010});
    CHECK_FALSE(cache.lookup(2, 0x10010, vh::access_wo));  // read-only range
    CHECK_FALSE(cache.lookup(3, 0x10010, vh::access_ro));  // another address space
    CHECK(cache.hits() == 2);
    CHECK(cache.misses() == 2);
    // An INVALIDATE of asid 1 touching the range's last byte drops the whole range, not asid 2's.
    cache.apply(inval(1, 0x11fff, 1, 0, 0));
    CHECK(cache.size() == 1);
    CHECK_FALSE(cache.lookup(1, 0x10000, vh::access_ro));
    CHECK(cache.lookup(2, 0x10000, vh::access_ro));
    // Full (capacity 2): the oldest goes first.
    cache.apply(update(1, 0x30000, 0x1000, 0x7300'0000, vh::access_rw));
    cache.apply(update(1, 0x40000, 0x1000, 0x7400'0000, vh::access_rw));
    CHECK(cache.size() == 2);
    CHECK_FALSE(cache.lookup(2, 0x10000, vh::access_ro));
    CHECK(cache.lookup(1, 0x30000, vh::access_ro));
    CHECK(cache.lookup(1, 0x40000, vh::access_ro));
}

TEST_CASE("vhost: a socket_stream moved into another closes the one it replaces and carries its end", "[vhost]") {
    auto a = vh::socket_stream::make_pair(20);
    auto b = vh::socket_stream::make_pair(20);
    REQUIRE(a);
    REQUIRE(b);
    const int replaced = b->first.fd(), moved = a->first.fd();
    b->first = std::move(a->first);
    CHECK(a->first.fd() == -1);
    CHECK(b->first.fd() == moved);
    // The replaced end was closed: its peer reads end-of-stream.
    std::array<std::uint8_t, 4> got{};
    CHECK(b->second.read_some(got) == -1);
    CHECK(::fcntl(replaced, F_GETFD) == -1);
    // The moved end still talks to its peer.
    const std::array<std::uint8_t, 3> msg{1, 2, 3};
    REQUIRE(b->first.write_all(msg));
    CHECK(a->second.read_some(got) == 3);
    CHECK(got[2] == 3);
    // Self-move keeps the descriptor.
    auto& self = b->first;
    self = std::move(b->first);
    CHECK(b->first.fd() == moved);
    CHECK_FALSE(a->first.write_all(msg));  // a moved-from end refuses to write
}
