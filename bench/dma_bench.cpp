// SPDX-License-Identifier: MIT
/// @file dma_bench.cpp
/// DMA workloads driven end to end through the virtio-iommu device's requestq (the simulated VM
/// of sim/machine.hpp): the guest builds each request in guest memory and sends it as a
/// descriptor chain, the device answers, and the device's DMA path translates every page the
/// workload touches through its IOTLB. Named `dma/<shape>/<mode>`; bench/README.md ("DMA
/// workloads: the fast protocol") has the figures.
///
/// Shapes:
/// - `net`: network-like. Each packet is one 4K buffer: mapped at the next IOVA of a ring of 256
///   slots, translated once (one DMA), done with. Buffers come from a 16 MiB pool in an order
///   that gives a slot a different buffer each time round.
/// - `net_recycled`: the same with recycled buffers (Linux's page_pool): a slot gets the same
///   buffer each time round, so a relaxed MAP repeats the mapping exactly.
/// - `storage/N`: storage-like. Each I/O is a scatter list of N 4K pages (N = 16, 64, 256: 64K,
///   256K, 1M) at scattered buffers, mapped at one IOVA range, every page translated, done with.
///
/// Modes (what the guest sends per packet / I/O):
/// - `strict`: MAP per page, UNMAP when done (one per packet; one for the I/O's range).
/// - `relaxed` (RELAXED): MAP per page through the guest's `deferred_unmapper`; when done, the
///   range is released to it instead of unmapped. It sends the unmaps that reach the
///   vulnerability window (10 ms, sent at half of it), and drops those a new MAP of the same
///   IOVA superseded: a ring slot comes round again within microseconds here, so in these
///   shapes the device replaces old mappings and hardly an UNMAP is ever sent.
/// - `map_sg` (MAP_SG): 16 packets (net) or the whole I/O in one MAP_SG; UNMAP of the range.
/// - `grouped` (GROUPED): the MAPs of 16 packets (net) or of the I/O as one group; the UNMAPs
///   of the 16 packets as one group (net) or one UNMAP (storage).
/// - `relaxed_map_sg` (RELAXED + MAP_SG): MAP_SG with relaxed rules, no UNMAP.
///
/// Every request is built and sent by the guest's `driver` (driver.hpp) over the machine's
/// requestq, so every mode pays the same guest-side costs.
///
/// `dma/net_vhost/<mode>`, `dma/net_recycled_vhost/<mode>`: the same network shapes, but the
/// DMA is a vhost backend's (virtio/vhost_iotlb.hpp): it looks the page up in its own cache
/// (`backend_cache`, 256 ranges) and on a miss sends a MISS through an in-memory stream to the
/// device's vhost IOTLB service and caches the UPDATE; every INVALIDATE the service sends is
/// applied before the next DMA. Counters add `backend_hit_rate` (cache hits / DMAs),
/// `vhost_misses` and `vhost_invalidates` per DMA page.
///
/// Counters per DMA page: `requests` (descriptor chains sent), `descriptors` (each chain here
/// is two: the readable part and the tail), `invalidations` (IOTLB invalidations the device
/// performed), `ns_per_page` (all of it: guest, requests and translations).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <iopgtable/virtio/vhost_iotlb.hpp>

#include "format_benches.hpp"

namespace iopgtable::bench {
namespace {

using namespace iopgtable::virtio;

constexpr std::uint64_t page = 0x1000;
constexpr std::uint64_t pool = machine<arm_host>::dma_gpa;  // 16 MiB of buffers
constexpr std::uint64_t pool_pages = 4096;
constexpr std::uint32_t rw = map_f_read | map_f_write;
constexpr std::uint64_t iova_base = 0x40000000;

enum class mode { strict, relaxed, map_sg, grouped, relaxed_map_sg };

struct dma_vm {
    using transport = machine<arm_host>;
    std::unique_ptr<machine<arm_host>> m;
    std::optional<driver<transport>> drv;
    std::optional<deferred_unmapper<transport>> unmapper;
    std::uint64_t chains = 0;

    explicit dma_vm(mode md) {
        machine_settings s;
        s.device.iotlb_entries = 4096;
        s.device.group_max = 256;
        s.device.features |= feature(f_map_sg) | feature(f_grouped);
        if (md == mode::relaxed || md == mode::relaxed_map_sg) s.device.features |= feature(f_relaxed);
        auto mc = machine<arm_host>::create(s);
        if (!mc) return;
        m = std::move(*mc);
        drv.emplace(*m);
        std::uint8_t cfg[sizeof(config_fast)];
        m->dev().read_config(config_fast_offset, cfg);
        const std::uint64_t neg = m->dev().driver_features();
        unmapper.emplace(*drv, deferral_settings::from(parse_config_fast(cfg, neg), neg));
    }
    bool ok(status st) {
        ++chains;
        return st == status::ok;
    }

    /// The vhost backend's side, when the DMA is a vhost backend's (`enable_vhost`).
    struct vhost_side {
        vhost::memory_stream stream{1u << 20};
        std::optional<vhost::vhost_iotlb_service<arm_host, vhost::memory_stream>> service;
        vhost::backend_cache cache{256};
        std::uint64_t dmas = 0, misses = 0, invalidates = 0;
        /// Applies what the service wrote; returns the last reply (UPDATE / ACCESS_FAIL) if any.
        std::optional<vhost::frame> apply() {
            std::optional<vhost::frame> reply;
            const auto b = stream.take();
            for (std::size_t at = 0; at + vhost::frame_size <= b.size(); at += vhost::frame_size) {
                const auto f = vhost::decode(std::span<const std::uint8_t, vhost::frame_size>(b.data() + at, vhost::frame_size));
                cache.apply(f);
                if (f.msg.type == vhost::iotlb_invalidate) ++invalidates;
                else reply = f;
            }
            return reply;
        }
    };
    std::unique_ptr<vhost_side> vh;
    void enable_vhost() {
        vh = std::make_unique<vhost_side>();
        const std::uint64_t base = m->guest().hpa_base(), size = m->guest().size();
        vh->service.emplace(m->dev(), vh->stream, [base, size](std::uint64_t hpa, std::uint64_t len) -> std::optional<std::uint64_t> {
            if (hpa < base || hpa - base >= size || len > size - (hpa - base)) return std::nullopt;
            return 0x7f0000000000 + (hpa - base);
        });
    }
    /// The backend's DMA of one page: its cache, or a MISS answered by the service.
    bool vhost_dma(std::uint64_t iova) {
        auto& s = *vh;
        ++s.dmas;
        (void)s.apply();  // INVALIDATEs the last requests sent
        if (auto u = s.cache.lookup(0, iova, vhost::access_wo)) {
            benchmark::DoNotOptimize(*u);
            return true;
        }
        ++s.misses;
        const auto f = vhost::encode(vhost::frame{vhost::msg_v2, 0, vhost::iotlb_msg{iova, 0, 0, vhost::access_wo, vhost::iotlb_miss}});
        if (!s.stream.push(f) || s.service->poll() != 1) return false;
        const auto reply = s.apply();
        return reply && reply->msg.type == vhost::iotlb_update;
    }
    static std::uint64_t now_ns() {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
    }
    bool map(std::uint64_t iova, std::uint64_t len, std::uint64_t gpa, bool relaxed) {
        return ok(relaxed ? unmapper->map(1, iova, iova + len - 1, gpa, rw) : drv->map(1, iova, iova + len - 1, gpa, rw));
    }
    bool map_sg(std::uint64_t iova, std::span<const std::uint64_t> bufs, bool relaxed) {
        return ok(relaxed ? unmapper->map_sg(1, iova, page, rw, bufs) : drv->map_sg(1, iova, page, rw, bufs));
    }
    /// Done with [iova, iova + len): UNMAP now, or released to the deferred unmapper (its
    /// requests counted when it sends them).
    bool done(std::uint64_t iova, std::uint64_t len, bool relaxed) {
        if (!relaxed) return ok(drv->unmap(1, iova, iova + len - 1));
        return unmapper->release(1, iova, iova + len - 1, now_ns()) == status::ok;
    }
    std::uint64_t requests() const { return chains + unmapper->stats().requests; }
    /// Translates [iova, iova + len) for a device write, as many calls as it takes.
    bool dma(std::uint64_t iova, std::uint64_t len) {
        if (vh) {
            for (std::uint64_t at = 0; at < len; at += page)
                if (!vhost_dma(iova + at)) return false;
            return true;
        }
        auto& dev = m->dev();
        while (len != 0) {
            const dma_result r = dev.translate(0, iova, len, nested::access_kind::write);
            if (!r.ok() || r.covered == 0) return false;
            benchmark::DoNotOptimize(r);
            iova += r.covered;
            len -= r.covered;
        }
        return true;
    }
};

/// Buffer for the k-th page the workload maps: scattered over the pool, and a ring slot gets a
/// different one each time round.
std::uint64_t buffer(std::uint64_t k) noexcept { return pool + ((k * 2654435761u) % pool_pages) * page; }

void report(benchmark::State& st, const dma_vm& v, std::uint64_t pages, std::uint64_t req0, std::uint64_t inv0) {
    if (pages == 0) return;
    const double p = static_cast<double>(pages);
    const double req = static_cast<double>(v.requests() - req0);
    st.counters["requests"] = req / p;
    st.counters["descriptors"] = 2.0 * req / p;
    st.counters["invalidations"] = static_cast<double>(v.m->dev().iotlb_invalidations() - inv0) / p;
}

/// 16 packets per timed batch round (the MAP_SG / group size), 256 per batch.
void net(benchmark::State& st, mode md, bool recycled, bool vhost_backend = false) {
    dma_vm v(md);
    if (!v.m || !v.ok(v.drv->attach(1, 0))) return fail(st, "setup");
    if (vhost_backend) v.enable_vhost();
    const bool relaxed = md == mode::relaxed || md == mode::relaxed_map_sg;
    constexpr unsigned ring = 256, burst = 16, per_batch = 256;
    std::uint64_t k = 0;
    bool good = true;
    auto run_batch = [&] {
        for (unsigned b = 0; b < per_batch / burst; ++b) {
            const std::uint64_t slot0 = k % ring;  // a burst never wraps (ring % burst == 0)
            const std::uint64_t iova0 = iova_base + slot0 * page;
            std::uint64_t bufs[burst];
            for (unsigned i = 0; i < burst; ++i) bufs[i] = buffer(recycled ? slot0 + i : k + i);
            switch (md) {
            case mode::strict:
            case mode::relaxed:
                for (unsigned i = 0; i < burst; ++i) {
                    good &= v.map(iova0 + i * page, page, bufs[i], relaxed);
                    good &= v.dma(iova0 + i * page, page);
                    good &= v.done(iova0 + i * page, page, relaxed);
                }
                break;
            case mode::map_sg:
            case mode::relaxed_map_sg:
                good &= v.map_sg(iova0, bufs, relaxed);
                for (unsigned i = 0; i < burst; ++i) good &= v.dma(iova0 + i * page, page);
                good &= v.done(iova0, burst * page, relaxed);
                break;
            case mode::grouped: {
                std::vector<request> maps, unmaps;
                for (unsigned i = 0; i < burst; ++i) {
                    maps.push_back(map_request(1, iova0 + i * page, iova0 + i * page + page - 1, bufs[i], rw));
                    unmaps.push_back(unmap_request(1, iova0 + i * page, iova0 + i * page + page - 1));
                }
                good &= v.ok(v.drv->send_group(maps));
                for (unsigned i = 0; i < burst; ++i) good &= v.dma(iova0 + i * page, page);
                good &= v.ok(v.drv->send_group(unmaps));
                break;
            }
            }
            k += burst;
        }
    };
    run_batch();  // tables in place, the ring populated (relaxed modes)
    const std::uint64_t inv0 = v.m->dev().iotlb_invalidations(), req0 = v.requests();
    const std::uint64_t vd0 = v.vh ? v.vh->dmas : 0, vm0 = v.vh ? v.vh->misses : 0, vi0 = v.vh ? v.vh->invalidates : 0;
    std::uint64_t pages = 0;
    {
        batch_timer timer(st, recycled ? "recycled 4K buffers over a 256-slot IOVA ring, one DMA each"
                                       : "4K packets over a 256-slot IOVA ring, one DMA each");
        for (auto _ : st) {
            timer.timed(per_batch, per_batch, run_batch);
            pages += per_batch;
            if (!good) break;
        }
    }
    if (!good) return fail(st, "a request or a DMA failed");
    report(st, v, pages, req0, inv0);
    if (v.vh && pages != 0) {
        const double d = static_cast<double>(v.vh->dmas - vd0), miss = static_cast<double>(v.vh->misses - vm0);
        st.counters["backend_hit_rate"] = d > 0 ? (d - miss) / d : 0;
        st.counters["vhost_misses"] = miss / static_cast<double>(pages);
        st.counters["vhost_invalidates"] = static_cast<double>(v.vh->invalidates - vi0) / static_cast<double>(pages);
    }
}

void storage(benchmark::State& st, mode md, unsigned n) {
    dma_vm v(md);
    if (!v.m || !v.ok(v.drv->attach(1, 0))) return fail(st, "setup");
    const bool relaxed = md == mode::relaxed || md == mode::relaxed_map_sg;
    std::uint64_t k = 0, io = 0;
    bool good = true;
    std::vector<std::uint64_t> bufs(n);
    auto one_io = [&] {
        const std::uint64_t iova0 = iova_base + (io++ % 8) * (std::uint64_t{n} * page);  // 8 I/Os in flight, ranges reused
        for (unsigned i = 0; i < n; ++i) bufs[i] = buffer(k + i);
        k += n;
        switch (md) {
        case mode::strict:
        case mode::relaxed:
            for (unsigned i = 0; i < n; ++i) good &= v.map(iova0 + i * page, page, bufs[i], relaxed);
            break;
        case mode::map_sg:
        case mode::relaxed_map_sg: good &= v.map_sg(iova0, bufs, relaxed); break;
        case mode::grouped: {
            std::vector<request> maps;
            for (unsigned i = 0; i < n; ++i)
                maps.push_back(map_request(1, iova0 + i * page, iova0 + i * page + page - 1, bufs[i], rw));
            good &= v.ok(v.drv->send_group(maps));
            break;
        }
        }
        good &= v.dma(iova0, std::uint64_t{n} * page);
        good &= v.done(iova0, std::uint64_t{n} * page, relaxed);
    };
    for (unsigned i = 0; i < 8; ++i) one_io();
    const std::uint64_t inv0 = v.m->dev().iotlb_invalidations(), req0 = v.requests();
    std::uint64_t pages = 0;
    {
        batch_timer timer(st, std::to_string(n * 4) + "K scatter lists of 4K pages, every page DMA'd");
        for (auto _ : st) {
            timer.timed(4, 4 * n, [&] {
                for (int i = 0; i < 4; ++i) one_io();
            });
            pages += 4 * n;
            if (!good) break;
        }
    }
    if (!good) return fail(st, "a request or a DMA failed");
    report(st, v, pages, req0, inv0);
}

const char* name(mode m) {
    switch (m) {
    case mode::strict: return "strict";
    case mode::relaxed: return "relaxed";
    case mode::map_sg: return "map_sg";
    case mode::grouped: return "grouped";
    case mode::relaxed_map_sg: return "relaxed_map_sg";
    }
    return "?";
}

const bool registered = [] {
    for (mode md : {mode::strict, mode::relaxed, mode::map_sg, mode::grouped, mode::relaxed_map_sg}) {
        for (bool recycled : {false, true})
            benchmark::RegisterBenchmark((std::string(recycled ? "dma/net_recycled/" : "dma/net/") + name(md)).c_str(),
                                         [md, recycled](benchmark::State& st) { net(st, md, recycled); })
                ->UseManualTime();
        for (bool recycled : {false, true})
            benchmark::RegisterBenchmark(
                (std::string(recycled ? "dma/net_recycled_vhost/" : "dma/net_vhost/") + name(md)).c_str(),
                [md, recycled](benchmark::State& st) { net(st, md, recycled, true); })
                ->UseManualTime();
        for (unsigned n : {16u, 64u, 256u})
            benchmark::RegisterBenchmark((std::string("dma/storage") + std::to_string(n * 4) + "k/" + name(md)).c_str(),
                                         [md, n](benchmark::State& st) { storage(st, md, n); })
                ->UseManualTime();
    }
    return true;
}();

} // namespace
} // namespace iopgtable::bench
