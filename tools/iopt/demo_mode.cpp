// SPDX-License-Identifier: MIT
/// @file demo_mode.cpp
/// `iopt demo`: a guest drives the virtio-iommu device of a simulated VM (sim/machine.hpp)
/// with the library's driver (virtio/driver.hpp): every request goes through the requestq,
/// the shared table is written through stage 2, and the devices' DMA goes through translate
/// into host memory, checked back through the guest's view of its RAM.
#include "demo_mode.hpp"

#include <array>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <boost/hana/tuple.hpp>
#include <iopgtable/sharing/negotiation.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/hosts.hpp>
#include <iopgtable/sim/machine.hpp>

#include "command_line.hpp"
#include "hex.hpp"
#include "script.hpp"
#include "virtio_mode.hpp"

namespace iopt {
namespace {

namespace vio = iopgtable::virtio;
namespace sharing = iopgtable::sharing;
using clock_type = std::chrono::steady_clock;

int fail(const std::string& message, int status = 2) { return report_failure("demo", message, status); }

/// A step of the demo went wrong (it never should): exit 1.
int step_failed(const std::string& step, vio::status s, std::string_view field = {}) {
    return fail(step + " failed: " + std::string(vio::to_string(s)) + (field.empty() ? "" : " ") + std::string(field), 1);
}

/// The machine as the driver's transport, timing every request it carries.
template <class Machine>
struct timed_transport {
    Machine* m = nullptr;
    clock_type::duration spent{};
    std::uint64_t count = 0;
    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        const auto t0 = clock_type::now();
        const std::uint32_t used = m->submit(in, out);
        spent += clock_type::now() - t0;
        ++count;
        return used;
    }
};

struct demo_settings {
    std::string host = "arm";  ///< a name from sim/hosts.hpp all_hosts
    vio::shared_mode sharing = vio::shared_mode::nested;
    std::uint64_t pages = 256;
};

std::string nanoseconds_each(clock_type::duration d, std::uint64_t n) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    return std::to_string(n == 0 ? 0 : ns / static_cast<long long>(n)) + " ns";
}

/// The byte pattern device `ep` writes into page `i` of its buffer.
void fill(std::vector<std::uint8_t>& data, std::uint32_t ep, std::uint64_t i) {
    for (std::size_t j = 0; j < data.size(); ++j) data[j] = static_cast<std::uint8_t>(ep * 0x55 + i * 3 + j * 7);
}

/// The fast protocol (include/iopgtable/virtio/README.md, "Fast protocol") on a second VM of
/// the same shape whose device offers RELAXED, MAP_SG and GROUPED: one relaxed MAP that
/// partly overrides an older one (a DMA through the old one first, so that the IOTLB holds
/// what the replacement must drop), its exact repeat that changes nothing, and one MAP_SG.
/// Returns 0, or the exit status of a failed step.
template <class Host>
int fast_exchanges(const vio::machine_settings& base) {
    using machine_type = vio::machine<Host>;
    using transport = timed_transport<machine_type>;
    vio::machine_settings ms = base;
    ms.device.features |= vio::feature(vio::f_relaxed) | vio::feature(vio::f_map_sg) | vio::feature(vio::f_grouped);
    auto mc = machine_type::create(ms);
    if (!mc) return step_failed("fast machine", mc.why().code, mc.why().field);
    machine_type& m = **mc;
    auto& dev = m.dev();
    transport tr{&m};
    vio::driver<transport> drv(tr);
    std::array<std::uint8_t, sizeof(vio::config_fast)> raw{};
    dev.read_config(vio::config_fast_offset, raw);
    const vio::fast_config fc = vio::parse_config_fast(raw, dev.driver_features());
    emit("fast protocol: a second VM whose device offers relaxed, map_sg, grouped (window " +
         std::to_string(fc.relaxed_window_us) + " us, group_max " + std::to_string(fc.group_max) + ", map_sg_max " +
         std::to_string(fc.map_sg_max) + "); endpoint 0 in domain 1");
    if (auto s = drv.attach(1, 0); s != vio::status::ok) return step_failed("fast ATTACH", s);

    constexpr std::uint64_t page = 0x1000, a = 0x100000, b = a + 2 * page, sg = 0x200000;
    const std::uint64_t gpa_a = machine_type::dma_gpa, gpa_b = gpa_a + 0x100000, gpa_sg = gpa_a + 0x200000;
    const auto hpa = [&](std::uint64_t iova) -> std::string {
        const vio::dma_result r = dev.translate(0, iova, 1, iopgtable::nested::access_kind::read);
        return r.ok() && r.count == 1 ? to_hex(r.ranges[0].hpa) : std::string("fault");
    };
    const std::uint32_t rw = vio::map_f_read | vio::map_f_write;

    if (auto s = drv.map(1, a, a + 4 * page - 1, gpa_a, rw); s != vio::status::ok) return step_failed("relaxed MAP", s);
    emit("relaxed: MAP IOVA " + to_hex(a) + "-" + to_hex(a + 4 * page - 1) + " -> GPA " + to_hex(gpa_a) +
         ": OK; DMA at " + to_hex(b) + " reaches HPA " + hpa(b) + " (now in the IOTLB)");
    const std::uint64_t inv0 = dev.iotlb_invalidations();
    if (auto s = drv.map(1, b, b + 4 * page - 1, gpa_b, rw); s != vio::status::ok) return step_failed("relaxed MAP", s);
    const std::uint64_t inv1 = dev.iotlb_invalidations();
    emit("relaxed: MAP IOVA " + to_hex(b) + "-" + to_hex(b + 4 * page - 1) + " -> GPA " + to_hex(gpa_b) +
         " over the upper half, no UNMAP first: OK, replaced " + std::to_string(dev.fast_stats().relaxed_replaced) +
         ", IOTLB invalidations " + std::to_string(inv1 - inv0) + "; DMA at " + to_hex(a) + " -> HPA " + hpa(a) +
         " (kept), at " + to_hex(b) + " -> HPA " + hpa(b) + " (the new mapping)");
    if (auto s = drv.map(1, b, b + 4 * page - 1, gpa_b, rw); s != vio::status::ok) return step_failed("relaxed MAP", s);
    emit("relaxed: the same MAP again: OK, nothing changed (exact repeats " +
         std::to_string(dev.fast_stats().relaxed_exact) + ", IOTLB invalidations " +
         std::to_string(dev.iotlb_invalidations() - inv1) + ")");

    const std::uint64_t phys[] = {gpa_sg + 5 * page, gpa_sg, gpa_sg + 9 * page, gpa_sg + 2 * page};
    if (auto s = drv.map_sg(1, sg, page, rw, phys); s != vio::status::ok) return step_failed("MAP_SG", s);
    std::string line = "map_sg: IOVA " + to_hex(sg) + ", 4 elements of " + to_hex(page) + " -> GPA";
    for (const auto p : phys) line += " " + to_hex(p);
    line += " in one request: OK; DMA";
    for (std::uint64_t i = 0; i < 4; ++i) line += (i ? ", " : " ") + to_hex(sg + i * page) + " -> HPA " + hpa(sg + i * page);
    emit(line);
    if (auto s = drv.detach(1, 0); s != vio::status::ok) return step_failed("fast DETACH", s);
    return 0;
}

/// Page requests (include/iopgtable/virtio/README.md, "Page requests") on a third VM whose
/// device offers PAGE_REQUESTS: the guest attaches its table with F_FAULT and maps nothing;
/// a device's write stalls, the guest reads the page request, its fault handler maps the page
/// (shared_table::resolve: map, INVALIDATE, PAGE_REPLY), and the access completes.
template <class Host>
int page_request_exchange(const vio::machine_settings& base) {
    using machine_type = vio::machine<Host>;
    using S1 = typename Host::domain_format;
    using S2 = typename Host::stage2_format;
    vio::machine_settings ms = base;
    ms.device.features |= vio::feature(vio::f_page_requests);
    auto mc = machine_type::create(ms);
    if (!mc) return step_failed("page-request machine", mc.why().code, mc.why().field);
    machine_type& m = **mc;
    auto& dev = m.dev();
    vio::driver<machine_type> drv(m);
    if (auto s = drv.attach(1, 0); s != vio::status::ok) return step_failed("page-request ATTACH", s);
    using table_type = vio::shared_table<S1, S2, iopgtable::guest_ram, machine_type>;
    auto shared = table_type::create(drv, m.stage2_table(), iopgtable::ipa_t{machine_type::table_window_gpa},
                                     machine_type::table_window_size, typename S1::config{}, 1, 0, nullptr,
                                     vio::table_f_fault);
    if (!shared) return step_failed("ATTACH_TABLE F_FAULT", shared.why().code, shared.why().field);
    constexpr std::uint64_t iova = 0x300000;
    const std::uint64_t gpa = machine_type::dma_gpa + 0x300000;
    emit("page requests: a third VM whose device offers page_requests; endpoint 0 in domain 1, the guest's " +
         std::string(S1::name) + " table attached with F_FAULT, nothing mapped");
    const vio::dma_result r = dev.translate(0, iova + 0x10, 4, iopgtable::nested::access_kind::write);
    if (!r.stalled()) return step_failed("the stall", vio::status::ok, "did not stall");
    const auto events = m.take_page_requests();
    if (events.size() != 1) return step_failed("the page request", vio::status::ok, "not one event");
    const auto p = vio::parse_page_request(events[0]);
    if (!p) return step_failed("the page request", vio::status::ioerr, "malformed");
    emit("page request " + to_hex(p->id) + ": endpoint " + std::to_string(p->endpoint) + " wrote at " +
         to_hex(iova + 0x10) + ", the device stalls the access and asks for page " + to_hex(p->address) + " of domain " +
         std::to_string(p->address_space));
    const vio::status s = shared->resolve(*p, [&](const vio::page_request_info&) {
        return std::optional<typename table_type::page_grant>(typename table_type::page_grant{iopgtable::ipa_t{gpa}});
    });
    if (s != vio::status::ok) return step_failed("PAGE_REPLY", s);
    std::vector<vio::dma_completion> done;
    dev.take_completions(done);
    if (done.size() != 1 || !done[0].result.ok() || done[0].result.count != 1)
        return step_failed("the resumed access", vio::status::ok, "did not complete translated");
    emit("the guest's fault handler maps IOVA " + to_hex(p->address) + " -> GPA " + to_hex(gpa) +
         ", INVALIDATEs and replies handled: OK; the access resumes at HPA " + to_hex(done[0].result.ranges[0].hpa));
    if (auto d = drv.detach(1, 0); d != vio::status::ok) return step_failed("page-request DETACH", d);
    return 0;
}

template <class Host>
int run_demo(const demo_settings& ds) {
    using machine_type = vio::machine<Host>;
    using S1 = typename Host::domain_format;  // the guest's table format for page-table sharing
    using S2 = typename Host::stage2_format;
    using transport = timed_transport<machine_type>;
    using iopgtable::prot;

    vio::machine_settings ms;
    ms.device.sharing = ds.sharing;
    auto mc = machine_type::create(ms);
    if (!mc) return step_failed("machine", mc.why().code, mc.why().field);
    machine_type& m = **mc;
    auto& dev = m.dev();
    transport tr{&m};
    vio::driver<transport> drv(tr);

    constexpr std::uint64_t page = 0x1000, iova = 0x100000;
    const std::uint64_t n = ds.pages, bytes = n * page;
    const std::uint64_t gpa0 = machine_type::dma_gpa, gpa1 = gpa0 + bytes, gpa_ro = gpa1 + bytes;
    const std::uint64_t ro_iova = iova + bytes;  // a read-only page after endpoint 0's buffer
    const char* mode = ds.sharing == vio::shared_mode::nested ? "nested" : "folded";

    emit(std::string("iopt demo: ") + Host::name + " host, guest RAM " +
         std::to_string(ms.ram_size >> 20) + " MiB at HPA " + to_hex(ms.host_base) + " behind " + S2::name +
         ", virtio-iommu with " + std::to_string(ms.device.endpoints) + " endpoints");

    // The guest probes both endpoints, as the spec asks before attaching them.
    const std::uint32_t probe_size = dev.config_space().probe_size;
    for (std::uint32_t ep = 0; ep < 2; ++ep) {
        auto info = drv.probe(ep, probe_size);
        if (!info) return step_failed("PROBE", info.why().code, info.why().field);
        std::string line = "probe endpoint " + std::to_string(ep) + ":";
        for (const auto& r : info->regions)
            line += std::string(" resv_mem ") + (r.subtype == vio::resv_mem_t_msi ? "msi " : "reserved ") + to_hex(r.start) +
                    "-" + to_hex(r.end);
        emit(line);
    }

    // Endpoint 0: MAP/UNMAP. Its buffer read/write, and one read-only page.
    if (auto s = drv.attach(1, 0); s != vio::status::ok) return step_failed("ATTACH", s);
    if (auto s = drv.map(1, iova, iova + bytes - 1, gpa0, vio::map_f_read | vio::map_f_write); s != vio::status::ok)
        return step_failed("MAP", s);
    if (auto s = drv.map(1, ro_iova, ro_iova + page - 1, gpa_ro, vio::map_f_read); s != vio::status::ok)
        return step_failed("MAP", s);
    emit("endpoint 0: domain 1, MAP/UNMAP: IOVA " + to_hex(iova) + "-" + to_hex(iova + bytes - 1) + " -> GPA " +
         to_hex(gpa0) + " rw, IOVA " + to_hex(ro_iova) + "-" + to_hex(ro_iova + page - 1) + " -> GPA " + to_hex(gpa_ro) + " r");

    // Endpoint 1: page-table sharing. The guest picks its format from PROBE_TABLE, builds its
    // table in its table window (written through stage 2), attaches it, maps its buffer, and
    // invalidates once: a folding device sees new entries only then (caching-mode rule).
    auto offered = drv.probe_table(1, 8);
    if (!offered) return step_failed("PROBE_TABLE", offered.why().code, offered.why().field);
    std::optional<typename S1::config> cfg;
    sharing::pick_format(boost::hana::make_tuple(sharing::guest_format<S1>{}), offered->formats,
                         [&](const auto& g) { cfg = g.want; });
    if (!cfg) return step_failed(std::string("PROBE_TABLE: no ") + S1::name + " table offered", vio::status::unsupp);
    const auto geo = S1::make_geometry(*cfg);
    emit("probe_table endpoint 1: " + std::to_string(offered->formats.size()) +
         (offered->formats.size() == 1 ? " format" : " formats") + ", the guest picks " + S1::name +
         " (ias " + std::to_string(geo->ias) + ", oas " + std::to_string(geo->oas) + ")");
    if (auto s = drv.attach(2, 1); s != vio::status::ok) return step_failed("ATTACH", s);
    auto shared = vio::shared_table<S1, S2, iopgtable::guest_ram, transport>::create(
        drv, m.stage2_table(), iopgtable::ipa_t{machine_type::table_window_gpa}, machine_type::table_window_size, *cfg, 2);
    if (!shared) return step_failed("ATTACH_TABLE", shared.why().code, shared.why().field);
    if (auto r = shared->map(iopgtable::iova_t{iova}, iopgtable::ipa_t{gpa1}, iopgtable::length_t{bytes},
                             prot::read | prot::write | prot::cache);
        !r)
        return step_failed("guest map", r.why().code, r.why().field);
    if (auto s = shared->invalidate(iova, bytes); s != vio::status::ok) return step_failed("INVALIDATE", s);
    emit(std::string("endpoint 1: domain 2, page-table sharing (") + mode + "): guest " + S1::name + " table at GPA " +
         to_hex(shared->root().value) + ", IOVA " + to_hex(iova) + "-" + to_hex(iova + bytes - 1) + " -> GPA " +
         to_hex(gpa1) + " rw");

    // The DMA workload. Pass 1: each device writes every page of its buffer through the
    // host-physical address translate gives (IOTLB misses). Pass 2: it reads them again (IOTLB
    // hits) and the guest checks the data through its own view of its RAM.
    std::vector<std::uint8_t> data(page), back(page);
    std::vector<std::uint64_t> hpa(2 * n, 0);
    clock_type::duration pass_time[2]{};
    std::uint64_t written = 0, verified = 0;
    for (int pass = 0; pass < 2; ++pass) {
        const auto kind = pass == 0 ? iopgtable::nested::access_kind::write : iopgtable::nested::access_kind::read;
        for (std::uint32_t ep = 0; ep < 2; ++ep) {
            for (std::uint64_t i = 0; i < n; ++i) {
                const auto t0 = clock_type::now();
                const vio::dma_result r = dev.translate(ep, iova + i * page, page, kind);
                pass_time[pass] += clock_type::now() - t0;
                if (!r.ok() || r.count != 1 || r.covered != page) continue;
                fill(data, ep, i);
                if (pass == 0) {
                    if (!m.host().write(iopgtable::pa_t{r.ranges[0].hpa}, data.data(), page)) continue;
                    hpa[ep * n + i] = r.ranges[0].hpa;
                    ++written;
                } else {
                    const std::uint64_t gpa = (ep == 0 ? gpa0 : gpa1) + i * page;
                    if (r.ranges[0].hpa == hpa[ep * n + i] && m.guest().read(iopgtable::pa_t{gpa}, back.data(), page) &&
                        back == data)
                        ++verified;
                }
            }
        }
    }
    emit("dma: " + std::to_string(written) + " pages written through translated host-physical addresses, " +
         std::to_string(verified) + " verified through guest memory");

    // One fault on purpose: endpoint 0 writes to its read-only page; the guest reads the event.
    const vio::dma_result f = dev.translate(0, ro_iova, 4, iopgtable::nested::access_kind::write);
    const auto events = m.take_events();
    if (f.ok() || events.size() != 1) return step_failed("the fault on purpose", vio::status::ok, "did not fault once");
    emit(fault_line(events[0]) + " (a DMA write to the read-only page, on purpose)");

    // Teardown: one UNMAP removes both mappings of domain 1 (they lie inside its range); the
    // guest unmaps its buffer (shared_table sends the INVALIDATE); both endpoints leave.
    if (auto s = drv.unmap(1, iova, ro_iova + page - 1); s != vio::status::ok) return step_failed("UNMAP", s);
    if (auto r = shared->unmap(iopgtable::iova_t{iova}, iopgtable::length_t{bytes}); !r)
        return step_failed("guest unmap", r.why().code, r.why().field);
    if (auto s = drv.detach(1, 0); s != vio::status::ok) return step_failed("DETACH", s);
    if (auto s = drv.detach(2, 1); s != vio::status::ok) return step_failed("DETACH", s);
    emit("teardown: UNMAP in domain 1, guest unmap and INVALIDATE in domain 2, DETACH of both endpoints");

    // The report.
    for (const auto& line : request_lines(dev.stats())) emit(line);
    const auto& t = dev.dma_stats();
    const std::uint64_t hits = dev.iotlb().hits(), misses = dev.iotlb().misses();
    emit("translations " + std::to_string(t.translations) + ", faults delivered " + std::to_string(t.faults_delivered) +
         ", dropped " + std::to_string(t.faults_dropped));
    char rate[32];
    std::snprintf(rate, sizeof rate, "%.1f%%", hits + misses == 0 ? 0.0 : 100.0 * double(hits) / double(hits + misses));
    emit("iotlb: " + std::to_string(hits) + " hits, " + std::to_string(misses) + " misses, hit rate " + rate);
    emit("time per request " + nanoseconds_each(tr.spent, tr.count) + " (" + std::to_string(tr.count) +
         " requests through the requestq)");
    emit("time per translation " + nanoseconds_each(pass_time[0], 2 * n) + " (pass 1, IOTLB misses), " +
         nanoseconds_each(pass_time[1], 2 * n) + " (pass 2, hits)");
    if (const int rc = fast_exchanges<Host>(ms); rc != 0) return rc;
    return page_request_exchange<Host>(ms);
}

} // namespace

int demo_mode(std::span<char* const> args) {
    auto parsed = parse_options(args);
    if (auto* why = std::get_if<std::string>(&parsed)) return fail(*why);
    const iopgtable::options& o = std::get<iopgtable::options>(parsed);
    demo_settings ds;
    if (auto h = o.text("host")) {
        if (!vio::with_host(*h, [](auto) {}))
            return fail("--host must be one of " + vio::host_names() + ", got '" + std::string(*h) + "'");
        ds.host = std::string(*h);
    }
    if (auto t = o.text("sharing")) {
        if (*t == "folded") ds.sharing = vio::shared_mode::folded;
        else if (*t != "nested") return fail("--sharing must be nested or folded, got '" + std::string(*t) + "'");
    }
    auto pages = o.number("pages", ds.pages);
    if (!pages || *pages == 0 || *pages > 4095)
        return fail("--pages needs a number from 1 to 4095, got '" + std::string(o.text("pages").value_or("")) + "'");
    ds.pages = *pages;
    for (const auto& k : o.unread()) return fail("demo does not take --" + k + " (options: --sharing, --pages, --host)");
    int rc = 2;
    vio::with_host(ds.host, [&](auto h) { rc = run_demo<typename decltype(h)::type>(ds); });
    return rc;
}

} // namespace iopt
