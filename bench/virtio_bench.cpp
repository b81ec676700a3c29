// SPDX-License-Identifier: MIT
/// @file virtio_bench.cpp
/// The virtio-iommu device (include/iopgtable/virtio/), named `virtio/<host>/<op>`, in the
/// simulated VM of machine.hpp: every request goes through the requestq as a guest sends it
/// (request written into guest memory, a descriptor chain, the kick, the device's answer, the
/// used ring read back). bench/README.md ("virtio") describes them and the figures.
///
/// | op | one call is |
/// |---|---|
/// | map_unmap_4k | a MAP request of one 4K page and the UNMAP request removing it (`ratio`: to the bare engine's map + unmap) |
/// | map_4k | a MAP request of one 4K page (its UNMAP untimed; `ratio`: to the bare engine's map) |
/// | guest_entry_invalidate_4k | page-table sharing: the guest writes a 4K entry in its own table (through stage 2) and, after removing it, sends INVALIDATE — the sharing equivalent of map_unmap_4k: new entries need no request |
/// | translate_hit | translate() of a 4K read, IOTLB hit |
/// | translate_miss_map | translate() missing the IOTLB, MAP/UNMAP domain (walk of the domain table, then stage 2) |
/// | translate_miss_nested | the same for a shared table walked nested over stage 2 |
/// | translate_miss_folded | the same for a shared table through its folded shadow |
/// | page_request_round_trip | page requests (README "Page requests"): a DMA that stalls in a table attached with F_FAULT, the page request read off the eventq, the guest's fault handler mapping the 4K page (shared_table::resolve: map, INVALIDATE, PAGE_REPLY) and the resumed access taken (`requests_per_call`: requestq requests per round trip) |
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <boost/hana/for_each.hpp>

#include <iopgtable/formats/arm_lpae.hpp>
#include <iopgtable/mem/host_heap.hpp>
#include <iopgtable/nested/stage2_view.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/hosts.hpp>
#include <iopgtable/sim/machine.hpp>

#include "format_benches.hpp"

namespace iopgtable::bench {
namespace {

using namespace iopgtable::virtio;

template <class Host>
struct vm {
    using S1 = typename Host::domain_format;  // the guest's table format in the sharing benches
    using S2 = typename Host::stage2_format;
    using gmem_type = nested::guest_table_memory<S2, guest_ram>;

    std::unique_ptr<machine<Host>> m;
    std::optional<gmem_type> gmem;
    std::optional<page_table<S1, gmem_type>> table;
    std::uint8_t reply[64]{};

    explicit vm(shared_mode mode = shared_mode::nested) {
        machine_settings s;
        s.device.sharing = mode;
        s.device.iotlb_entries = 4096;
        auto mc = machine<Host>::create(s);
        if (!mc) return;
        m = std::move(*mc);
    }
    status send(const std::vector<std::uint8_t>& in) {
        const std::uint32_t used = m->submit(in, std::span<std::uint8_t>(reply, 4));
        return used == 4 ? static_cast<status>(reply[0]) : status::ioerr;
    }
    bool attach(std::uint32_t dom, std::uint32_t ep) { return send(attach_request(dom, ep).readable) == status::ok; }
    static std::vector<std::uint8_t> map_req(std::uint32_t dom, std::uint64_t iova, std::uint64_t gpa, std::uint64_t len) {
        return map_request(dom, iova, iova + len - 1, gpa, map_f_read | map_f_write).readable;
    }
    static std::vector<std::uint8_t> unmap_req(std::uint32_t dom, std::uint64_t iova, std::uint64_t len) {
        return unmap_request(dom, iova, iova + len - 1).readable;
    }
    static std::vector<std::uint8_t> invalidate_req(std::uint32_t dom, std::uint64_t iova, std::uint64_t len) {
        return invalidate_request(dom, 0, invalidate_kind::vaddr, iova, len).readable;
    }
    /// The guest's own table in its table window, attached to `dom` (which `ep` joined).
    bool share(std::uint32_t dom, std::uint32_t ep) {
        if (!attach(dom, ep)) return false;
        gmem.emplace(m->stage2_table(), ipa_t{machine<Host>::table_window_gpa}, machine<Host>::table_window_size);
        auto t = page_table<S1, gmem_type>::create(typename S1::config{}, *gmem);
        if (!t) return false;
        table.emplace(std::move(*t));
        auto req = sharing::make_attach_table<S1>(table->cfg(), pa_t{table->root().value}, 1);
        if (!req) return false;
        req->address_space = dom;
        return send(attach_table_request(*req).readable) == status::ok;
    }
};

constexpr std::uint64_t page = 0x1000;
constexpr std::uint64_t window = machine<arm_host>::dma_gpa;  // GPAs the guest maps
constexpr unsigned batch = 64;

/// The requests against their reference, timed in the same iterations: the bare engine doing
/// the same table work (`map` + `unmap`, or `map`, of the same 4K pages) on a table of the
/// MAP domains' format and memory (`page_table<Host::domain_format, host_heap>`, map_table.hpp)
/// with the prot a READ|WRITE MAP gets. Counters `ref_min_ns_per_call` (the reference's fastest
/// batch) and `ratio` (min_ns_per_call / ref_min_ns_per_call).
template <class Host>
void map_unmap(benchmark::State& st, bool with_unmap) {
    using D = typename Host::domain_format;
    using va = typename D::input_address;
    vm<Host> v;
    if (!v.m || !v.attach(1, 0)) return fail(st, "setup");
    host_heap heap;
    auto bare = page_table<D, host_heap>::create(typename D::config{}, heap);
    if (!bare) return fail(st, "reference table");
    const prot p = map_flags_to_prot(map_f_read | map_f_write);
    std::vector<std::vector<std::uint8_t>> maps, unmaps;
    for (unsigned i = 0; i < batch; ++i) {
        maps.push_back(v.map_req(1, 0x100000 + i * page, window + i * page, page));
        unmaps.push_back(v.unmap_req(1, 0x100000 + i * page, page));
    }
    batch_timer timer(st, with_unmap ? "MAP + UNMAP of 4K, through the requestq" : "MAP of 4K, through the requestq");
    reference_timer ref;
    auto reference = [&](auto&& fn) { ref.timed(batch, fn); };
    bool good = true;
    for (auto _ : st) {
        if (with_unmap) {
            timer.timed(batch, batch, [&] {
                for (unsigned i = 0; i < batch; ++i) good &= v.send(maps[i]) == status::ok && v.send(unmaps[i]) == status::ok;
            });
            reference([&] {
                for (unsigned i = 0; i < batch; ++i) {
                    good &= bare->map(va{0x100000 + i * page}, pa_t{window + i * page}, length_t{page}, p).ok();
                    good &= bare->unmap(va{0x100000 + i * page}, length_t{page}).ok();
                }
            });
        } else {
            timer.timed(batch, batch, [&] {
                for (unsigned i = 0; i < batch; ++i) good &= v.send(maps[i]) == status::ok;
            });
            for (unsigned i = 0; i < batch; ++i) good &= v.send(unmaps[i]) == status::ok;
            reference([&] {
                for (unsigned i = 0; i < batch; ++i)
                    good &= bare->map(va{0x100000 + i * page}, pa_t{window + i * page}, length_t{page}, p).ok();
            });
            for (unsigned i = 0; i < batch; ++i) good &= bare->unmap(va{0x100000 + i * page}, length_t{page}).ok();
        }
        if (!good) break;
    }
    if (!good) return fail(st, "a request or a reference op failed");
    ref.report(st, timer);
}

template <class Host>
void guest_entry_invalidate(benchmark::State& st) {
    vm<Host> v;
    if (!v.m || !v.share(2, 0)) return fail(st, "setup");
    std::vector<std::vector<std::uint8_t>> invs;
    for (unsigned i = 0; i < batch; ++i) invs.push_back(v.invalidate_req(2, 0x100000 + i * page, page));
    // Tables in place before timing.
    (void)v.table->map(iova_t{0x100000}, pa_t{window}, length_t{page}, prot::read | prot::write);
    (void)v.table->unmap(iova_t{0x100000}, length_t{page});
    batch_timer timer(st, "guest writes a 4K entry, removes it, INVALIDATE through the requestq");
    bool good = true;
    for (auto _ : st) {
        timer.timed(batch, batch, [&] {
            for (unsigned i = 0; i < batch; ++i) {
                good &= v.table->map(iova_t{0x100000 + i * page}, pa_t{window + i * page}, length_t{page},
                                     prot::read | prot::write).ok();
                good &= v.table->unmap(iova_t{0x100000 + i * page}, length_t{page}).ok();
                good &= v.send(invs[i]) == status::ok;
            }
        });
        if (!good) break;
    }
    if (!good) fail(st, "a map, unmap or INVALIDATE failed");
}

/// One page request served per call: stall → event → the guest maps and replies → the
/// completion. The guest's table, its driver and shared_table as in the tests; the pages are
/// unmapped (with their INVALIDATE) untimed after each batch so that each call stalls again.
template <class Host>
void page_request_round_trip(benchmark::State& st, shared_mode mode) {
    using S1 = typename Host::domain_format;
    using S2 = typename Host::stage2_format;
    using table_type = shared_table<S1, S2, guest_ram, machine<Host>>;
    machine_settings s;
    s.device.sharing = mode;
    s.device.features |= feature(f_page_requests);
    auto mc = machine<Host>::create(s);
    if (!mc) return fail(st, "machine");
    machine<Host>& m = **mc;
    driver<machine<Host>> drv(m);
    if (drv.attach(1, 0) != status::ok) return fail(st, "attach");
    auto t = table_type::create(drv, m.stage2_table(), ipa_t{machine<Host>::table_window_gpa},
                                machine<Host>::table_window_size, typename S1::config{}, 1, 1, nullptr, table_f_fault);
    if (!t) return fail(st, "ATTACH_TABLE F_FAULT");
    constexpr std::uint64_t base = 0x40000000;
    // Tables in place before timing (the first map of a region allocates them).
    (void)t->map(typename S1::input_address{base}, ipa_t{window}, length_t{page}, prot::read | prot::write | prot::cache);
    (void)t->unmap(typename S1::input_address{base}, length_t{page});
    auto grant = [&](std::uint64_t gpa) {
        return [gpa](const page_request_info&) {
            return std::optional<typename table_type::page_grant>(typename table_type::page_grant{ipa_t{gpa}});
        };
    };
    std::vector<dma_completion> done;
    done.reserve(batch);
    const std::uint64_t requests0 = drv.sent(req_type::invalidate) + drv.sent(req_type::page_reply);
    std::uint64_t calls = 0;
    batch_timer timer(st, std::string("page request round trip, shared table ") +
                              (mode == shared_mode::nested ? "nested" : "folded"));
    bool good = true;
    for (auto _ : st) {
        timer.timed(batch, batch, [&] {
            for (unsigned i = 0; i < batch; ++i) {
                const dma_result r = m.dev().translate(0, base + i * page + 0x10, 8, nested::access_kind::write);
                good &= r.stalled();
                for (const auto& ev : m.take_page_requests()) {
                    auto p = parse_page_request(ev);
                    good &= p.has_value() && t->resolve(*p, grant(window + i * page)) == status::ok;
                }
                done.clear();
                m.dev().take_completions(done);
                good &= done.size() == 1 && done[0].result.ok() && done[0].token == r.pending;
                benchmark::DoNotOptimize(done);
            }
        });
        calls += batch;
        for (unsigned i = 0; i < batch; ++i)
            good &= t->unmap(typename S1::input_address{base + i * page}, length_t{page}).ok();
        if (!good) break;
    }
    if (!good) return fail(st, "a round trip did not complete translated");
    const std::uint64_t requests = drv.sent(req_type::invalidate) + drv.sent(req_type::page_reply) - requests0 -
                                   calls;  // less the untimed unmaps' INVALIDATEs
    if (calls > 0) st.counters["requests_per_call"] = static_cast<double>(requests) / static_cast<double>(calls);
}

enum class space { map, nested, folded };

/// 256 translations per batch of 4K reads over `pages` pages: with pages ≤ the IOTLB (4096
/// entries, direct-mapped) and warmed, hits; with 2 × 4096 pages walked in order, mostly misses (the hit rate is reported).
template <class Host>
void translate(benchmark::State& st, space kind, bool hit) {
    vm<Host> v(kind == space::folded ? shared_mode::folded : shared_mode::nested);
    const std::uint64_t pages = hit ? 256 : 2 * 4096;  // 32 MiB: the whole DMA area of guest RAM
    if (!v.m) return fail(st, "setup");
    if (kind == space::map) {
        if (!v.attach(1, 0) || v.send(v.map_req(1, 0x40000000, window, pages * page)) != status::ok) return fail(st, "map");
    } else {
        if (!v.share(2, 0)) return fail(st, "share");
        if (!v.table->map(iova_t{0x40000000}, pa_t{window}, length_t{pages * page}, prot::read | prot::write))
            return fail(st, "guest map");
        if (v.send(v.invalidate_req(2, 0x40000000, pages * page)) != status::ok) return fail(st, "invalidate");
    }
    auto& dev = v.m->dev();
    for (std::uint64_t i = 0; i < pages; ++i)
        if (!dev.translate(0, 0x40000000 + i * page, 8, nested::access_kind::read).ok()) return fail(st, "translate");
    const std::uint64_t hits0 = dev.iotlb().hits(), misses0 = dev.iotlb().misses();
    batch_timer timer(st, std::string(kind == space::map ? "MAP domain" : kind == space::nested ? "shared table, nested" : "shared table, folded") +
                              (hit ? ", IOTLB hit" : ", IOTLB miss"));
    // MAP domains: the reference is iova_to_phys of the same addresses in the domain's own
    // table (host_heap, 4 levels), timed in the same iterations.
    const auto* maps = kind == space::map ? dev.mappings(1) : nullptr;
    reference_timer ref;
    std::uint64_t next = 0, ref_next = 0, bad = 0;
    for (auto _ : st) {
        timer.timed(256, 256, [&] {
            for (int i = 0; i < 256; ++i) {
                auto r = dev.translate(0, 0x40000000 + next * page + 0x10, 8, nested::access_kind::read);
                bad += !r.ok();
                benchmark::DoNotOptimize(r);
                if (++next == pages) next = 0;
            }
        });
        if (maps != nullptr) {
            ref.timed(256, [&] {
                for (int i = 0; i < 256; ++i) {
                    auto r = maps->table().iova_to_phys(
                        typename Host::domain_format::input_address{0x40000000 + ref_next * page + 0x10});
                    bad += !r;
                    benchmark::DoNotOptimize(r);
                    if (++ref_next == pages) ref_next = 0;
                }
            });
        }
    }
    if (bad) return fail(st, "translation faulted");
    if (maps != nullptr) ref.report(st, timer);
    const double h = static_cast<double>(dev.iotlb().hits() - hits0), m = static_cast<double>(dev.iotlb().misses() - misses0);
    st.counters["iotlb_hit_rate"] = h + m > 0 ? h / (h + m) : 0;
}

template <class Host>
void register_host(const std::string& host) {
    const std::string p = "virtio/" + host + "/";
    auto add = [](const std::string& name, auto fn) { benchmark::RegisterBenchmark(name.c_str(), fn)->UseManualTime(); };
    add(p + "map_unmap_4k", [](benchmark::State& st) { map_unmap<Host>(st, true); });
    add(p + "map_4k", [](benchmark::State& st) { map_unmap<Host>(st, false); });
    add(p + "guest_entry_invalidate_4k", [](benchmark::State& st) { guest_entry_invalidate<Host>(st); });
    add(p + "translate_hit", [](benchmark::State& st) { translate<Host>(st, space::map, true); });
    add(p + "translate_miss_map", [](benchmark::State& st) { translate<Host>(st, space::map, false); });
    add(p + "translate_miss_nested", [](benchmark::State& st) { translate<Host>(st, space::nested, false); });
    add(p + "translate_miss_folded", [](benchmark::State& st) { translate<Host>(st, space::folded, false); });
    add(p + "page_request_round_trip", [](benchmark::State& st) { page_request_round_trip<Host>(st, shared_mode::nested); });
    add(p + "page_request_round_trip_folded",
        [](benchmark::State& st) { page_request_round_trip<Host>(st, shared_mode::folded); });
}

const bool registered = [] {
    // Every simulated host (sim/hosts.hpp all_hosts), named as `iopt virtio --host` names it.
    boost::hana::for_each(all_hosts, [](auto h) {
        using Host = typename decltype(h)::type;
        register_host<Host>(Host::name);
    });
    return true;
}();

} // namespace
} // namespace iopgtable::bench
