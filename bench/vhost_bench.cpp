// SPDX-License-Identifier: MIT
/// @file vhost_bench.cpp
/// The vhost IOTLB service (virtio/vhost_iotlb.hpp): MISS → UPDATE latency, the whole round
/// trip of a backend's question as the backend sees it (encode the MISS, the service reads it,
/// translates through the device and widens the range, remembers it, writes the UPDATE, the
/// backend reads and decodes it). Named `vhost/<host>/<case>`; bench/README.md has the figures.
///
/// | case | what |
/// |---|---|
/// | miss_update_1page | 256 single-page ranges (IOVA pages mapped to scattered buffers), MISSed in turn over an in-memory stream; after the first round each is a repeat the service already remembers |
/// | miss_update_64pages | the same with 4 runs of 64 contiguous pages: each UPDATE widens over 64 leaves |
/// | miss_update_socket | miss_update_1page over a socketpair (the backend in the same thread: send, the service's recv and send, recv) |
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <sys/socket.h>

#include <benchmark/benchmark.h>

#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>

#include "format_benches.hpp"

namespace iopgtable::bench {
namespace {

using namespace iopgtable::virtio;
namespace vh = iopgtable::virtio::vhost;

constexpr std::uint64_t page = 0x1000, iova_base = 0x40000000;

std::optional<std::uint64_t> vmm_address(std::uint64_t base, std::uint64_t size, std::uint64_t hpa, std::uint64_t len) {
    if (hpa < base || hpa - base >= size || len > size - (hpa - base)) return std::nullopt;
    return 0x7f0000000000 + (hpa - base);
}

enum class kind { one_page, runs_of_64, socket };

void miss_update(benchmark::State& st, kind k) {
    auto mc = machine<arm_host>::create({});
    if (!mc) return fail(st, "machine");
    auto& m = **mc;
    driver<machine<arm_host>> drv(m);
    if (drv.attach(1, 0) != status::ok) return fail(st, "attach");
    constexpr unsigned n = 256;
    for (unsigned i = 0; i < n; ++i) {
        // 1 page: every other buffer, so no two neighbours are contiguous; runs: 64 contiguous,
        // then a page left out.
        const std::uint64_t gpa = machine<arm_host>::dma_gpa + (k == kind::runs_of_64 ? i + i / 64 : 2 * i) * page;
        if (drv.map(1, iova_base + i * page, iova_base + i * page + page - 1, gpa, map_f_read | map_f_write) != status::ok)
            return fail(st, "map");
    }
    const std::uint64_t base = m.guest().hpa_base(), size = m.guest().size();
    auto uaddr = [base, size](std::uint64_t hpa, std::uint64_t len) { return vmm_address(base, size, hpa, len); };
    bool good = true;
    std::uint64_t i = 0;
    auto check = [&](const vh::frame_bytes& b) {
        const vh::frame f = vh::decode(b);
        good &= f.msg.type == vh::iotlb_update && f.msg.size == (k == kind::runs_of_64 ? 64 : 1) * page;
    };
    const std::string label = k == kind::runs_of_64 ? "64-page ranges, in-memory stream"
                               : k == kind::socket  ? "1-page ranges, socketpair"
                                                    : "1-page ranges, in-memory stream";
    if (k == kind::socket) {
        auto pair = vh::socket_stream::make_pair();
        if (!pair) return fail(st, "socketpair");
        vh::vhost_iotlb_service<arm_host, vh::socket_stream> svc(m.dev(), pair->first, uaddr);
        const int fd = pair->second.fd();
        batch_timer timer(st, label);
        for (auto _ : st) {
            timer.timed(n, n, [&] {
                for (unsigned j = 0; j < n; ++j, ++i) {
                    const auto q = vh::encode(vh::frame{vh::msg_v2, 0, {iova_base + (i % n) * page, 0, 0, vh::access_ro, vh::iotlb_miss}});
                    good &= ::send(fd, q.data(), q.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(q.size());
                    good &= svc.poll() == 1;
                    vh::frame_bytes b{};
                    good &= ::recv(fd, b.data(), b.size(), MSG_WAITALL) == static_cast<ssize_t>(b.size());
                    check(b);
                }
            });
            if (!good) break;
        }
    } else {
        vh::memory_stream s;
        vh::vhost_iotlb_service<arm_host, vh::memory_stream> svc(m.dev(), s, uaddr);
        batch_timer timer(st, label);
        for (auto _ : st) {
            timer.timed(n, n, [&] {
                for (unsigned j = 0; j < n; ++j, ++i) {
                    const auto q = vh::encode(vh::frame{vh::msg_v2, 0, {iova_base + (i % n) * page, 0, 0, vh::access_ro, vh::iotlb_miss}});
                    good &= s.push(q);
                    good &= svc.poll() == 1;
                    const auto out = s.take();
                    vh::frame_bytes b{};
                    good &= out.size() == b.size();
                    if (out.size() == b.size()) std::copy(out.begin(), out.end(), b.begin());
                    check(b);
                }
            });
            if (!good) break;
        }
    }
    if (!good) fail(st, "a MISS was not answered with the expected UPDATE");
}

const bool registered = [] {
    benchmark::RegisterBenchmark("vhost/arm/miss_update_1page", [](benchmark::State& st) { miss_update(st, kind::one_page); })
        ->UseManualTime();
    benchmark::RegisterBenchmark("vhost/arm/miss_update_64pages", [](benchmark::State& st) { miss_update(st, kind::runs_of_64); })
        ->UseManualTime();
    benchmark::RegisterBenchmark("vhost/arm/miss_update_socket", [](benchmark::State& st) { miss_update(st, kind::socket); })
        ->UseManualTime();
    return true;
}();

} // namespace
} // namespace iopgtable::bench
