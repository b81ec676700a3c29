// SPDX-License-Identifier: MIT
#pragma once
/// @file device.hpp
/// A minimal virtio-iommu device (virtio 1.3, 5.13 "IOMMU Device"), header-only, for a VMM to
/// embed: the requests of the specification (ATTACH, DETACH, MAP, UNMAP, PROBE), this
/// project's page-table sharing (PROBE_TABLE, ATTACH_TABLE, INVALIDATE; formats/README.md) and
/// fast protocol (relaxed MAP/UNMAP, MAP_SG, grouped requests; README.md "Fast protocol"),
/// the config space, fault events on the eventq, and the VMM's DMA path `translate`.
///
/// The simulated machine (see guest_memory.hpp): host memory is a `guest_ram` standing for
/// host-physical RAM; the guest's RAM is one slot of it (`guest_view`, GPA → HPA); the VMM's
/// stage 2 is a page table of format S2 over host memory mapping that slot (`map_slot`).
/// MAP/UNMAP domains are page tables of the host's format D holding IOVA → GPA
/// (map_table.hpp): what an IOMMU nesting them over stage 2 would walk. Shared-table domains
/// walk the guest's own table nested over stage 2, or through a folded shadow of format D
/// (shared_space.hpp). `translate` always answers host-physical addresses.
///
/// Requests: `handle(readable, writable)` answers one request (the bytes a descriptor chain
/// holds); `process_requests()` pops the requestq, answers each chain and publishes the used
/// ring. Every request has one handler; every refusal is a virtio status, and a refused
/// request changes nothing. Hostile input: every field is checked, every buffer bounded, every
/// count capped (domains, mappings and table memory per domain → NOMEM).
///
/// Not thread-safe: one caller at a time (a VMM serialises the requestq and the DMA path or
/// puts a lock around both).
#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string_view>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <boost/hana/length.hpp>

#include "../engine/page_table.hpp"
#include "../mem/guest_ram.hpp"
#include "../nested/types.hpp"
#include "../sharing/invalidate.hpp"
#include "../sharing/negotiation.hpp"
#include "guest_memory.hpp"
#include "iotlb.hpp"
#include "map_table.hpp"
#include "page_requests.hpp"
#include "shared_space.hpp"
#include "virtqueue.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

/// A reserved region PROBE reports (RESV_MEM) and MAP refuses. `last` inclusive.
struct reserved_region {
    std::uint64_t start = 0, last = 0;
    std::uint8_t subtype = resv_mem_t_reserved;
};

/// The x86 MSI doorbell window every x86 VMM reports (peers.md: QEMU q35, cloud-hypervisor).
inline constexpr reserved_region x86_msi_window{0xfee00000, 0xfeefffff, resv_mem_t_msi};

inline constexpr std::uint64_t feature(unsigned bit) noexcept { return std::uint64_t{1} << bit; }

/// What the VMM configures. Defaults: every feature this device implements (INPUT_RANGE
/// included, never the legacy BYPASS), a 4 KiB granule, the input range the MAP domains' table
/// can map, any 32-bit domain, the x86 MSI window reserved.
struct device_settings {
    std::uint64_t features = feature(f_version_1) | feature(f_input_range) | feature(f_domain_range) |
                             feature(f_map_unmap) | feature(f_probe) | feature(f_mmio) | feature(f_bypass_config) |
                             feature(f_table_sharing) | feature(f_indirect_desc) | feature(f_event_idx);
    std::uint64_t page_size_mask = 0x1000;
    /// config.input_range, `input_end` inclusive. Spec 5.13.6: "the virtual address range that
    /// the IOMMU is able to translate" (Linux makes it the domain aperture), so it may not go
    /// beyond what a MAP domain's table maps: [0, 2^ias − 1] of the host's domain format.
    /// No `input_end`: that last address (`device::settings()` then holds it).
    std::uint64_t input_start = 0;
    std::optional<std::uint64_t> input_end;
    std::uint32_t domain_start = 0, domain_end = ~std::uint32_t{0};
    std::uint32_t probe_size = 512;
    bool boot_bypass = false;  ///< config.bypass after a system reset (BYPASS_CONFIG)
    std::uint32_t endpoints = 2;  ///< endpoint IDs 0 .. endpoints - 1
    std::vector<reserved_region> reserved{x86_msi_window};
    // Caps against a hostile guest.
    std::uint32_t max_domains = 1u << 16;
    std::uint64_t max_mappings = 1u << 20;            ///< per MAP/UNMAP domain
    std::uint64_t max_table_bytes = 64ull << 20;      ///< table memory per domain (MAP table or shadow)
    std::uint64_t fold_fetch_budget = 1u << 22;       ///< stage-1 entries one folded re-read may fetch
    std::uint32_t max_contexts = 64;                  ///< ATTACH_TABLE F_INDIRECT slots
    shared_mode sharing = shared_mode::nested;
    std::size_t iotlb_entries = 4096;
    std::uint32_t max_writable = 1u << 16;  ///< device-writable bytes of one chain the device uses
    // The fast protocol (features RELAXED / MAP_SG / GROUPED, offered only when added to
    // `features`): config_fast's values.
    std::uint32_t relaxed_window_us = 10000;  ///< the vulnerability window a relaxed driver may keep unmaps
    std::uint32_t group_max = 64;             ///< requests in one group
    std::uint32_t map_sg_max = 1024;          ///< elements in one MAP_SG
    // Page requests (feature PAGE_REQUESTS, offered only when added to `features`; README.md
    // "Page requests"): the bounds on what a guest can keep waiting, and the timeout.
    page_request_limits page_requests{};
};

/// The fast protocol's counters.
struct fast_stats {
    std::uint64_t groups = 0;            ///< groups run (framing accepted)
    std::uint64_t groups_failed = 0;     ///< of which one request failed and the group was rolled back
    std::uint64_t rollbacks = 0;         ///< changes undone (group members, MAP_SG elements)
    std::uint64_t rollback_failures = 0; ///< undos the table refused (host out of memory): DEVERR
    std::uint64_t map_sg = 0;            ///< MAP_SG requests answered OK
    std::uint64_t map_sg_elems = 0;      ///< their elements
    std::uint64_t relaxed_exact = 0;     ///< relaxed MAPs that repeated a mapping (nothing done)
    std::uint64_t relaxed_replaced = 0;  ///< relaxed MAPs / UNMAPs that removed old translation
};

/// A request's counters: by type (index = type byte) and status; `unanswered` got used length 0.
struct request_stats {
    std::array<std::array<std::uint64_t, 9>, 256> by_type_status{};
    std::array<std::uint64_t, 256> unanswered{};
    std::uint64_t malformed_chains = 0;
    std::uint64_t total() const noexcept {
        std::uint64_t n = 0;
        for (const auto& t : by_type_status)
            for (auto v : t) n += v;
        for (auto v : unanswered) n += v;
        return n;
    }
};

/// One contiguous piece of a DMA translation. No default member values (write `dma_range{}`
/// for zeros): dma_result zeroes its eight itself, see there.
struct dma_range {
    std::uint64_t iova, hpa, length;
};

/// A fault as the device reports it on the eventq (virtio_iommu_fault).
struct dma_fault {
    std::uint64_t address = 0;
    std::uint32_t flags = 0;                ///< fault_f_read / write / exec, fault_f_address
    std::uint32_t endpoint = 0;
    std::uint8_t reason = fault_r_unknown;  ///< fault_r_domain / fault_r_mapping / fault_r_unknown
    bool delivered = false;  ///< written into an eventq buffer (false: dropped, none was there)
};

/// What `translate` found: up to `ranges.size()` pieces covering `covered` bytes from the
/// start; then either the end of the request, more to ask for (`covered < size`, no fault:
/// call again at iova + covered), or a fault at iova + covered.
struct dma_result {
    std::array<dma_range, 8> ranges;  ///< all zero beyond `count`
    unsigned count = 0;
    std::uint64_t covered = 0;
    std::optional<dma_fault> fault;
    /// Page requests: not 0, the access stalled at iova + covered (no fault) and this is its
    /// token; `take_completions` later says how it completed.
    std::uint64_t pending = 0;
    bool ok() const noexcept { return !fault.has_value(); }
    bool stalled() const noexcept { return pending != 0; }

    /// Every range zero. Written as a loop of element stores, not `ranges{}`: g++ clears a
    /// value-initialized block above 64 bytes with `rep stos`, whose start-up cost 14 ns of an
    /// IOTLB hit's 21 (x86-64, g++ 12 -O2); this loop becomes plain vector stores with g++ and
    /// clang at -O1 to -O3.
    dma_result() noexcept {
        for (dma_range& x : ranges) x = dma_range{0, 0, 0};
    }
};

/// How a stalled access completed (README.md "Page requests"): the translation of
/// [iova, the end of its 4 KiB page or of the access] after the guest's reply (ranges, or the
/// unrecoverable fault, also posted on the eventq), in the order the accesses stalled within
/// one page request.
struct dma_completion {
    std::uint64_t token = 0;
    std::uint32_t endpoint = 0;
    std::uint64_t iova = 0;
    dma_result result;
};

/// Page requests' counters.
struct page_request_stats {
    std::uint64_t requests = 0;        ///< page requests posted on the eventq
    std::uint64_t joined = 0;          ///< accesses that joined an open page request
    std::uint64_t not_stalled = 0;     ///< misses that faulted at once: a bound, no event buffer, no memory
    std::uint64_t replies_handled = 0; ///< PAGE_REPLY OK with reply HANDLED
    std::uint64_t replies_failed = 0;  ///< PAGE_REPLY OK with reply FAILED
    std::uint64_t timeouts = 0;        ///< page requests that timed out
    std::uint64_t aborted = 0;         ///< page requests closed by DETACH, a new table, reset or a broken queue
    std::uint64_t completed_ok = 0;    ///< accesses that completed translated
    std::uint64_t completed_fault = 0; ///< accesses that completed with the fault
};

struct translate_stats {
    std::uint64_t translations = 0, pages = 0, faults = 0, faults_delivered = 0, faults_dropped = 0;
};

/// What a change took away from `translate`'s answers, for a `translation_observer`: the
/// translations of a range of one domain's address space, of a whole domain, of an endpoint
/// (it changed domain or left one), or of everything. Conservative: it may name more than
/// actually changed, never less.
struct translations_removed {
    enum class scope : std::uint8_t { range, domain, endpoint, all };
    scope what = scope::all;
    std::uint32_t id = 0;  ///< the domain (range, domain) or the endpoint (endpoint)
    std::uint64_t first = 0, last = ~std::uint64_t{0};  ///< range: the IOVAs, inclusive
};

/// Told by the device, inside the request (or call) that makes the change and before it
/// completes, whenever translations `translate` gave may no longer hold: UNMAP, a relaxed MAP
/// that replaced translation, ATTACH moving an endpoint, DETACH, INVALIDATE, ATTACH_TABLE,
/// a group's rollback, a bypass change (config byte or legacy BYPASS negotiated), reset and
/// `stage2_changed`. The vhost IOTLB service (vhost_iotlb.hpp) is one. The observer must not
/// call back into the device's requests.
class translation_observer {
public:
    virtual void translations_gone(const translations_removed& what) noexcept = 0;

protected:
    ~translation_observer() = default;
};

/// Maps the guest-RAM slot `guest` in the VMM's stage 2 (GPA → HPA, read/write, cacheable).
template <page_table_format S2, table_memory M>
result<void> map_slot(page_table<S2, M>& stage2, const guest_view& guest) {
    return stage2.map(typename S2::input_address{guest.gpa_base()}, pa_t{guest.hpa_base()}, length_t{guest.size()},
                      prot::read | prot::write | prot::cache);
}

/// What a device's `Host` names: the host's IOMMU.
///   name                         // how tools name it (`iopt virtio --host NAME`)
///   using domain_format = ...;  // MAP/UNMAP tables and folded shadows (a stage-1 format)
///   using stage2_format = ...;  // the VMM's stage 2
///   static auto table_formats(); // hana tuple of sharing::device_format<F>: what guests may attach
/// (sim/hosts.hpp has the simulated ones.)
template <class H>
concept device_host = requires {
    { H::name } -> std::convertible_to<const char*>;
    requires page_table_format<typename H::domain_format>;
    requires page_table_format<typename H::stage2_format>;
    requires std::same_as<typename H::domain_format::input_address, iova_t>;
    requires std::same_as<typename H::stage2_format::input_address, ipa_t>;
    H::table_formats();
};

/// The device for the host IOMMU `Host` (`device_host`).
template <device_host Host>
class device {
public:
    using D = typename Host::domain_format;
    using S2 = typename Host::stage2_format;
    using formats_type = decltype(Host::table_formats());
    using binding = sharing::binding_for<formats_type>;
    using stage2_table = page_table<S2, guest_ram>;

    /// A device for the guest RAM `guest` (a slot of `host`), the VMM's `stage2` mapping it,
    /// domains of `domain_cfg`. Refusals (INVAL, the reason names the setting), in this order:
    /// a domain configuration D refuses ("domain configuration"); no VERSION_1 offered
    /// ("features: VERSION_1"); BYPASS offered with BYPASS_CONFIG ("features: BYPASS with
    /// BYPASS_CONFIG": devices SHOULD NOT offer both, 5.13.3.2); a page_size_mask whose granule
    /// is smaller than D's smallest page ("page_size_mask"); input_end < input_start ("input
    /// range"); input_end beyond the last address a MAP domain's table maps ("input range:
    /// beyond the domain table", 5.13.6: input_range is what the IOMMU is able to translate);
    /// domain_end < domain_start ("domain range"); no endpoint ("endpoints"); a probe_size
    /// that cannot hold the reserved regions or is not a multiple of 4 ("probe_size"); a
    /// reserved region with last < start ("reserved region"); two reserved regions that
    /// overlap ("reserved regions: overlap") or more than one MSI region ("reserved regions:
    /// more than one MSI"): the device SHOULD NOT present either (5.13.6.8.1.2); PAGE_REQUESTS
    /// offered without TABLE_SHARING ("features: PAGE_REQUESTS without TABLE_SHARING").
    static checked<std::unique_ptr<device>> create(guest_ram& host, guest_view guest, stage2_table& stage2,
                                                   const typename D::config& domain_cfg, device_settings s = {}) {
        auto geo = D::make_geometry(domain_cfg);
        if (!geo) return refusal{status::inval, "domain configuration"};
        const std::uint64_t granule = s.page_size_mask & (~s.page_size_mask + 1);
        const std::uint64_t min_page = geo->pgsize_bitmap & (~geo->pgsize_bitmap + 1);
        const std::uint64_t table_last = geo->ias >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << geo->ias) - 1;
        if (!s.input_end) s.input_end = table_last;
        if ((s.features & feature(f_version_1)) == 0) return refusal{status::inval, "features: VERSION_1"};
        if ((s.features & feature(f_bypass)) != 0 && (s.features & feature(f_bypass_config)) != 0)
            return refusal{status::inval, "features: BYPASS with BYPASS_CONFIG"};
        if ((s.features & feature(f_page_requests)) != 0 && (s.features & feature(f_table_sharing)) == 0)
            return refusal{status::inval, "features: PAGE_REQUESTS without TABLE_SHARING"};
        if (granule == 0 || granule < min_page) return refusal{status::inval, "page_size_mask"};
        if (*s.input_end < s.input_start) return refusal{status::inval, "input range"};
        if (*s.input_end > table_last) return refusal{status::inval, "input range: beyond the domain table"};
        if (s.domain_end < s.domain_start) return refusal{status::inval, "domain range"};
        if (s.endpoints == 0) return refusal{status::inval, "endpoints"};
        if (s.probe_size % 4 != 0 || s.probe_size < s.reserved.size() * sizeof(probe_resv_mem))
            return refusal{status::inval, "probe_size"};
        if (auto why = check_reserved(s.reserved)) return refusal{status::inval, *why};
        return std::unique_ptr<device>(new device(host, guest, stage2, domain_cfg, std::move(s)));
    }
    device(const device&) = delete;
    device& operator=(const device&) = delete;

    // ------------------------------------------------------------------ transport

    std::uint64_t device_features() const noexcept { return set_.features; }
    /// FEATURES_OK: the driver's features must be a subset of the device's and include
    /// VERSION_1. False (nothing changes) otherwise.
    bool set_driver_features(std::uint64_t f) noexcept {
        if ((f & ~set_.features) != 0 || (f & feature(f_version_1)) == 0) return false;
        if (f != driver_features_) gone_all();  // legacy BYPASS may come or go
        driver_features_ = f;
        return true;
    }
    std::uint64_t driver_features() const noexcept { return driver_features_; }
    bool negotiated(unsigned bit) const noexcept { return (driver_features_ >> bit) & 1; }
    bool offered(unsigned bit) const noexcept { return (set_.features >> bit) & 1; }

    /// The 40-byte config space (fields of features not offered read as zero).
    virtio::config config_space() const noexcept {
        virtio::config c;
        c.page_size_mask = set_.page_size_mask;
        if (offered(f_input_range)) {
            c.input_range.start = set_.input_start;
            c.input_range.end = *set_.input_end;
        }
        if (offered(f_domain_range)) {
            c.domain_range.start = set_.domain_start;
            c.domain_range.end = set_.domain_end;
        }
        if (offered(f_probe)) c.probe_size = set_.probe_size;
        if (offered(f_bypass_config)) c.bypass = bypass_;
        return c;
    }
    /// This project's config fields at offset 40 (each zero unless its feature is offered).
    virtio::config_fast config_fast_space() const noexcept {
        virtio::config_fast c;
        if (offered(f_relaxed)) c.relaxed_window_us = set_.relaxed_window_us;
        if (offered(f_grouped)) c.group_max = set_.group_max;
        if (offered(f_map_sg)) c.map_sg_max = set_.map_sg_max;
        return c;
    }
    /// Config reads at any offset and width: the spec's 40 bytes, then config_fast (16 bytes);
    /// bytes beyond read as zero.
    void read_config(std::uint32_t offset, std::span<std::uint8_t> out) const noexcept {
        static_assert(config_fast_offset == sizeof(virtio::config));
        struct {
            virtio::config spec;
            virtio::config_fast fast;
        } c{config_space(), config_fast_space()};
        static_assert(sizeof c == sizeof(virtio::config) + sizeof(virtio::config_fast));
        const auto* b = reinterpret_cast<const std::uint8_t*>(&c);
        for (std::size_t i = 0; i < out.size(); ++i) {
            const std::uint64_t at = std::uint64_t{offset} + i;
            out[i] = at < sizeof c ? b[at] : 0;
        }
    }
    /// Config writes: only the bypass byte (offset 36, one byte, 0 or 1, BYPASS_CONFIG
    /// offered). False and nothing changes otherwise.
    bool write_config(std::uint32_t offset, std::span<const std::uint8_t> in) noexcept {
        if (!offered(f_bypass_config) || offset != offsetof(virtio::config, bypass) || in.size() != 1 || in[0] > 1)
            return false;
        if (bypass_ != in[0]) gone_all();
        bypass_ = in[0];
        return true;
    }
    /// Device reset: no endpoint attached, no domain, features and queues forgotten, caches
    /// empty. The bypass byte survives (spec: it SHOULD NOT change on device reset).
    void reset() noexcept {
        gone_all();
        domains_.clear();
        for (auto& e : endpoints_) e = no_domain;
        std::fill(ep_domain_.begin(), ep_domain_.end(), nullptr);
        driver_features_ = 0;
        requestq_.reset();
        eventq_.reset();
        iotlb_.invalidate_all();
        // Stalled accesses complete with the fault (no eventq left to report it on).
        abort_page_requests([](const page_request&) { return true; });
    }
    /// System reset: also the bypass byte back to its boot value.
    void system_reset() noexcept {
        reset();
        bypass_ = set_.boot_bypass ? 1 : 0;
    }
    /// Sets up queue 0 (requestq) or 1 (eventq) in guest memory with the negotiated
    /// INDIRECT_DESC / EVENT_IDX. False for another index or a layout outside guest RAM.
    bool set_queue(unsigned index, queue_layout l) {
        const queue_features f = queue_features::from_bits(driver_features_);
        if (index > 1 || !valid_layout(guest_, l, f)) return false;
        (index == 0 ? requestq_ : eventq_).emplace(guest_, l, f);
        return true;
    }
    /// Whether a queue is marked broken (DEVICE_NEEDS_RESET).
    bool needs_reset() const noexcept {
        return (requestq_ && requestq_->broken()) || (eventq_ && eventq_->broken());
    }

    // ------------------------------------------------------------------ requests

    /// Pops every available requestq chain, answers it and publishes it used. A malformed
    /// chain is returned with used length 0. Returns the chains handled; `take_notify(0)`
    /// then says whether the driver is owed an interrupt.
    ///
    /// The chain and the reply live in buffers the device keeps (`chain_`, `reply_`), so a
    /// request allocates nothing once they have grown to the largest chain seen.
    std::size_t process_requests() {
        if (!requestq_) return 0;
        std::size_t n = 0;
        auto& p = chain_;
        while (requestq_->pop(p)) {
            ++n;
            if (p.error != chain_error::none) {
                ++stats_.malformed_chains;
                requestq_->push_used(p.c.head, 0);
                continue;
            }
            const auto w = static_cast<std::size_t>(std::min<std::uint64_t>(p.c.writable_len, set_.max_writable));
            reply_.assign(w, 0);
            const std::uint32_t used = handle(p.c.readable, reply_);
            if (used != 0 && !requestq_->write(p.c, 0, std::span<const std::uint8_t>(reply_.data(), used))) {
                requestq_->push_used(p.c.head, 0);
                continue;
            }
            requestq_->push_used(p.c.head, used);
        }
        // A huge chain (up to the queue's readable cap) does not pin its buffer.
        if (p.c.readable.capacity() > kept_chain_bytes) p.c.readable = {};
        // A broken queue: the guest's replies may never come, so the stalled accesses fail now.
        if (needs_reset()) abort_page_requests([](const page_request&) { return true; });
        return n;
    }
    /// Whether queue `index` owes the driver an interrupt for what was used since the last call.
    bool take_notify(unsigned index) {
        auto& q = index == 0 ? requestq_ : eventq_;
        return q && q->needs_notify();
    }

    /// Answers one request: `in` is every device-readable byte of its chain, `out` the
    /// device-writable space. Returns the used length (bytes written at the start of `out`).
    /// 0 and nothing written: an unknown type (5.13.6.2), a PROBE or page-table-sharing
    /// request whose feature is not offered (5.13.6.7.2: the type is then unknown to this
    /// device), a readable part shorter than the request, or no room for the tail (5.13.6).
    /// A request of a feature offered but not negotiated is answered UNSUPP, "unsupported
    /// request" (MAP and UNMAP: "only available when VIRTIO_IOMMU_F_MAP_UNMAP has been
    /// negotiated", 5.13.6.5; PROBE and PROBE_TABLE / ATTACH_TABLE / INVALIDATE alike).
    ///
    /// GROUPED negotiated: a head with G set starts a group (`on_group`); for the types a group
    /// may hold (`groupable`), L without G or a head bit 10–31 set is INVAL. Not negotiated:
    /// the head's bytes above the type are ignored, as before.
    ///
    /// PAGE_REQUESTS: after any request, page requests whose endpoint left their domain or
    /// whose table was replaced (ATTACH_TABLE) are closed and their accesses fail.
    std::uint32_t handle(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        const std::uint32_t used = handle_request(in, out);
        if (prq_.size() != 0) sweep_page_requests();
        return used;
    }

private:
    std::uint32_t handle_request(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        if (in.size() < sizeof(req_head)) return unanswered(in.empty() ? 0 : in[0]);
        const std::uint8_t type = in[0];
        if (negotiated(f_grouped)) {
            const std::uint32_t word = detail::load<std::uint32_t>(in, 0);
            if ((word & req_f_group) != 0) return on_group(in, out);
            if ((word & ~std::uint32_t{0xff}) != 0 && groupable(type)) {
                if (out.size() < sizeof(req_tail)) return unanswered(type);
                return answer(out, 0, type, status::inval);
            }
        }
        switch (static_cast<req_type>(type)) {
        case req_type::attach: return simple<req_attach>(in, out, &device::on_attach);
        case req_type::detach: return simple<req_detach>(in, out, &device::on_detach);
        case req_type::map: return simple<req_map>(in, out, &device::on_map);
        case req_type::unmap: return simple<req_unmap>(in, out, &device::on_unmap);
        case req_type::probe: return on_probe(in, out);
        case req_type::probe_table: return on_probe_table(in, out);
        case req_type::attach_table:
            if (!offered(f_table_sharing)) return unanswered(type);
            return simple<req_attach_table>(in, out, &device::on_attach_table);
        case req_type::invalidate:
            if (!offered(f_table_sharing)) return unanswered(type);
            return simple<req_invalidate>(in, out, &device::on_invalidate);
        case req_type::map_sg:
            if (!offered(f_map_sg)) return unanswered(type);
            return on_map_sg_request(in, out);
        case req_type::page_reply:
            if (!offered(f_page_requests)) return unanswered(type);
            return simple<req_page_reply>(in, out, &device::on_page_reply);
        }
        return unanswered(type);
    }

public:

    // ------------------------------------------------------------------ DMA path

    /// Translates [iova, iova + size) of `endpoint` for `access` (read, write; exec counts as
    /// read for the permission check and sets the EXEC flag of a fault). Bypass (an unattached
    /// endpoint with config.bypass = 1 or legacy BYPASS negotiated, or a bypass domain): the
    /// identity, through stage 2. A fault is posted on the eventq if a buffer is there
    /// (`delivered`), else counted dropped: an unknown endpoint (UNKNOWN), an endpoint in no
    /// domain and not in bypass (DOMAIN), an address not mapped or not allowing the access
    /// (MAPPING; also when stage 2 does not map the guest-physical address).
    ///
    /// PAGE_REQUESTS: where a MAPPING fault would be in a shared table attached with F_FAULT,
    /// the access stalls instead (`pending`, README.md "Page requests") unless a bound is
    /// reached, no event buffer of 32 bytes is there or a queue is broken (then the fault).
    dma_result translate(std::uint32_t endpoint, std::uint64_t iova, std::uint64_t size, nested::access_kind access) {
        return translate_dma(endpoint, iova, size, access, true);
    }

    /// PAGE_REQUESTS: the device's clock, in microseconds, an explicit input (the device never
    /// reads a clock): it only moves forward (an earlier time is ignored). Page requests
    /// posted timeout_us or more before `now_us` close and their accesses complete with the
    /// fault. A new device's clock is 0.
    void advance_clock(std::uint64_t now_us) {
        if (now_us <= now_us_) return;
        now_us_ = now_us;
        const std::uint64_t timeout = set_.page_requests.timeout_us;
        std::uint64_t expired = 0;
        prq_.close_if([&](const page_request& r) { return now_us_ - r.posted_us >= timeout; },
                      [&](page_request& r) {
                          ++expired;
                          fail_waiting(r, fault_r_mapping);
                      });
        prstats_.timeouts += expired;
    }
    std::uint64_t clock_us() const noexcept { return now_us_; }

    /// Appends the stalled accesses completed since the last call to `out`, in completion
    /// order, and forgets them (at most page_requests.accesses wait here).
    void take_completions(std::vector<dma_completion>& out) {
        out.insert(out.end(), completions_.begin(), completions_.end());
        completions_.clear();  // capacity kept: completing never allocates
    }
    /// The page requests open now (id, endpoint, domain, page, waiting accesses), oldest first.
    const std::vector<page_request>& page_requests() const noexcept { return prq_.requests(); }
    std::size_t stalled_accesses() const noexcept { return prq_.stalled(); }
    const virtio::page_request_stats& page_request_stats() const noexcept { return prstats_; }

private:
    /// The access kinds a DMA (unprivileged) may make through a leaf with `perm`: bit n for
    /// access_kind n (the IOTLB keeps it, so a hit tests one bit).
    static std::uint8_t allowed_kinds(prot perm) noexcept {
        using R = nested::access_rights;
        static_assert(R::read == 1u << unsigned(nested::access_kind::read) &&
                      R::write == 1u << unsigned(nested::access_kind::write) &&
                      R::exec == 1u << unsigned(nested::access_kind::exec));
        // nested::permits(perm, {kind, false}) for each kind at once.
        return nested::rights_of(perm, permission_rule::arm_stage1).unprivileged;
    }

    // Every return below returns `r` itself, so that it is built in the caller's result (a
    // dma_result is 248 bytes: copies at the returns cost instructions on every hit).
    dma_result translate_dma(std::uint32_t endpoint, std::uint64_t iova, std::uint64_t size, nested::access_kind access,
                             bool may_stall) {
        ++tstats_.translations;
        dma_result r;
        if (size == 0) return r;
        const std::uint64_t last = iova + (size - 1) < iova ? ~std::uint64_t{0} : iova + (size - 1);
        if (endpoint >= ep_domain_.size()) {
            fault_at(r, endpoint, iova, access, fault_r_unknown);
            return r;
        }
        domain* const d = ep_domain_[endpoint];
        const bool identity = d == nullptr ? in_global_bypass() : d->bypass;
        if (d == nullptr && !identity) {
            fault_at(r, endpoint, iova, access, fault_r_domain);
            return r;
        }
        const std::uint64_t tag = identity ? identity_tag : d->tag;
        const unsigned want = 1u << unsigned(access);
        for (std::uint64_t pos = iova;;) {
            ++tstats_.pages;
            std::uint64_t hpa = 0;
            unsigned leaf_lg2 = device_iotlb::page_lg2;
            if (const auto* e = iotlb_.find(tag, pos)) {
                if ((e->allowed & want) == 0) {
                    miss(r, endpoint, d, pos, last, access, may_stall);
                    return r;
                }
                hpa = e->hpa_page + (pos & ((std::uint64_t{1} << device_iotlb::page_lg2) - 1));
                leaf_lg2 = e->leaf_lg2;
            } else {
                const space_walk w = identity ? walk_stage2(pos) : walk_domain(*d, pos);
                const std::uint8_t allowed = w.ok ? allowed_kinds(w.perm) : 0;
                if (w.ok) iotlb_.insert(tag, pos, w.hpa, w.size_lg2, allowed);
                if ((allowed & want) == 0) {
                    miss(r, endpoint, d, pos, last, access, may_stall);
                    return r;
                }
                hpa = w.hpa;
                leaf_lg2 = w.size_lg2;
            }
            const std::uint64_t leaf_last = leaf_lg2 >= 64 ? ~std::uint64_t{0} : (pos | ((std::uint64_t{1} << leaf_lg2) - 1));
            const std::uint64_t piece_last = std::min(leaf_last, last);
            const std::uint64_t len = piece_last - pos + 1;
            if (r.count > 0 && r.ranges[r.count - 1].hpa + r.ranges[r.count - 1].length == hpa &&
                r.ranges[r.count - 1].iova + r.ranges[r.count - 1].length == pos) {
                r.ranges[r.count - 1].length += len;
            } else {
                if (r.count == r.ranges.size()) return r;  // more to ask for
                r.ranges[r.count++] = dma_range{pos, hpa, len};
            }
            r.covered += len;
            if (piece_last == last) return r;
            pos = piece_last + 1;
        }
    }

public:

    /// The VMM changed its stage 2 over [gpa, gpa + size) (a memory slot moved or went away):
    /// folded shadows refold what the range covers, walk caches drop it, and the IOTLB drops
    /// everything (its entries are keyed by IOVA, not GPA). Call it after the change, before
    /// the next translate.
    void stage2_changed(std::uint64_t gpa, std::uint64_t size) {
        for (auto& [id, d] : domains_)
            if (d->shared) d->shared->stage2_changed(gpa, size);
        iotlb_.invalidate_all();
        gone_all();
    }

    /// The translation `translate` would find for the page holding `iova` of `endpoint`
    /// (`ok` false where it would fault), without the IOTLB, counters or a fault event: for a
    /// service that widens an answer around an address `translate` gave (vhost_iotlb.hpp).
    space_walk peek_translation(std::uint32_t endpoint, std::uint64_t iova) {
        if (endpoint >= ep_domain_.size()) return {};
        domain* const d = ep_domain_[endpoint];
        const bool identity = d == nullptr ? in_global_bypass() : d->bypass;
        if (d == nullptr && !identity) return {};
        return identity ? walk_stage2(iova) : walk_domain(*d, iova);
    }

    /// Who is told when translations go away (nullptr: nobody; the default). One at a time;
    /// the observer must outlive the device or be unset first.
    void set_translation_observer(translation_observer* o) noexcept { observer_ = o; }

    // ------------------------------------------------------------------ inspection

    const request_stats& stats() const noexcept { return stats_; }
    const virtio::fast_stats& fast_stats() const noexcept { return fstats_; }
    /// IOTLB invalidations the device performed: one per request (UNMAP, a MAP that replaced
    /// translation, INVALIDATE, a rollback) that dropped translations, however many entries.
    std::uint64_t iotlb_invalidations() const noexcept { return invalidations_; }
    const translate_stats& dma_stats() const noexcept { return tstats_; }
    const device_iotlb& iotlb() const noexcept { return iotlb_; }
    const device_settings& settings() const noexcept { return set_; }
    std::size_t domain_count() const noexcept { return domains_.size(); }
    /// The domain endpoint `ep` is attached to, if any.
    std::optional<std::uint32_t> domain_of(std::uint32_t ep) const noexcept {
        if (ep >= endpoints_.size() || endpoints_[ep] == no_domain) return std::nullopt;
        return static_cast<std::uint32_t>(endpoints_[ep]);
    }
    /// The mappings of a MAP/UNMAP domain (nullptr: no such domain, or not in MAP mode).
    const map_table<D>* mappings(std::uint32_t domain_id) const noexcept {
        auto it = domains_.find(domain_id);
        return it == domains_.end() ? nullptr : it->second->maps.get();
    }
    /// The shared space of a table domain (nullptr otherwise).
    const shared_space* shared(std::uint32_t domain_id) const noexcept {
        auto it = domains_.find(domain_id);
        return it == domains_.end() ? nullptr : it->second->shared.get();
    }
    std::uint8_t bypass() const noexcept { return bypass_; }

private:
    static constexpr std::uint64_t no_domain = ~std::uint64_t{0};
    static constexpr std::size_t kept_chain_bytes = 1u << 16;  ///< readable buffer kept between kicks
    static constexpr std::uint64_t identity_tag = 1;

    struct domain {
        std::uint32_t id = 0;
        std::uint64_t tag = 0;  ///< IOTLB tag of the current address space (never reused)
        bool bypass = false;
        std::uint32_t endpoints = 0;
        std::unique_ptr<map_table<D>> maps;       ///< MAP/UNMAP mode
        std::optional<binding> table;             ///< page-table-sharing mode: the attached table
        std::unique_ptr<shared_space> shared;     ///< and its translation
        std::uint64_t table_seq = 0;              ///< which ATTACH_TABLE gave the table (page requests)
    };

    device(guest_ram& host, guest_view guest, stage2_table& stage2, const typename D::config& cfg, device_settings s)
        : host_(host), guest_(guest), s2_(stage2), domain_cfg_(cfg), set_(std::move(s)),
          endpoints_(set_.endpoints, no_domain), ep_domain_(set_.endpoints, nullptr), iotlb_(set_.iotlb_entries), bypass_(set_.boot_bypass ? 1 : 0),
          prq_(set_.page_requests) {}

    bool in_global_bypass() const noexcept {
        return (offered(f_bypass_config) && bypass_ == 1) || negotiated(f_bypass);
    }
    template <std::size_t N>
    static bool zeros(const std::uint8_t (&b)[N]) noexcept {
        return std::all_of(b, b + N, [](std::uint8_t v) { return v == 0; });
    }
    std::uint64_t granule() const noexcept { return set_.page_size_mask & (~set_.page_size_mask + 1); }
    /// Why `regions` cannot be presented as PROBE's RESV_MEM properties, or nothing: a region
    /// with last < start; more than one MSI region, or two regions overlapping (the device
    /// SHOULD NOT present either, 5.13.6.8.1.2).
    static std::optional<std::string_view> check_reserved(const std::vector<reserved_region>& regions) {
        std::size_t msi = 0;
        for (const auto& r : regions) {
            if (r.last < r.start) return "reserved region";
            if (r.subtype == resv_mem_t_msi) ++msi;
        }
        if (msi > 1) return "reserved regions: more than one MSI";
        std::vector<reserved_region> sorted = regions;
        std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
        for (std::size_t i = 1; i < sorted.size(); ++i)
            if (sorted[i].start <= sorted[i - 1].last) return "reserved regions: overlap";
        return std::nullopt;
    }

    // ---- the translation observer (requests only: `translate` never calls it)

    void gone(translations_removed::scope what, std::uint32_t id, std::uint64_t first = 0,
              std::uint64_t last = ~std::uint64_t{0}) noexcept {
        if (observer_ != nullptr) observer_->translations_gone(translations_removed{what, id, first, last});
    }
    void gone_all() noexcept { gone(translations_removed::scope::all, 0); }

    // ---- framing

    std::uint32_t unanswered(std::uint8_t type) noexcept {
        ++stats_.unanswered[type];
        return 0;
    }
    std::uint32_t answer(std::span<std::uint8_t> out, std::size_t tail_at, std::uint8_t type, status s) noexcept {
        out[tail_at] = static_cast<std::uint8_t>(s);
        out[tail_at + 1] = out[tail_at + 2] = out[tail_at + 3] = 0;
        ++stats_.by_type_status[type][static_cast<std::uint8_t>(s)];
        return static_cast<std::uint32_t>(tail_at + sizeof(req_tail));
    }
    /// Requests whose writable part is the tail alone: the readable part must be exactly the
    /// request without its tail (shorter: unanswered; longer: INVAL).
    template <class Req>
    std::uint32_t simple(std::span<const std::uint8_t> in, std::span<std::uint8_t> out, status (device::*fn)(const Req&)) {
        constexpr std::size_t readable = sizeof(Req) - sizeof(req_tail);
        const std::uint8_t type = in[0];
        if (in.size() < readable || out.size() < sizeof(req_tail)) return unanswered(type);
        if (in.size() > readable) return answer(out, 0, type, status::inval);
        Req req;
        std::memcpy(static_cast<void*>(&req), in.data(), readable);
        return answer(out, 0, type, (this->*fn)(req));
    }

    // ---- domains

    std::uint64_t new_tag() noexcept { return ++last_tag_; }
    domain* find_domain(std::uint32_t id) noexcept {
        auto it = domains_.find(id);
        return it == domains_.end() ? nullptr : it->second.get();
    }
    void leave(std::uint32_t ep) noexcept {
        if (endpoints_[ep] == no_domain) return;
        const auto id = static_cast<std::uint32_t>(endpoints_[ep]);
        endpoints_[ep] = no_domain;
        ep_domain_[ep] = nullptr;
        auto it = domains_.find(id);
        if (it != domains_.end() && --it->second->endpoints == 0) {
            // Inside a group the domain is kept until the group commits (a rollback brings it back).
            if (journal_ != nullptr) journal_->graveyard.push_back(domains_.extract(it));  // room reserved
            else domains_.erase(it);  // its tag dies with it
        }
    }
    /// domain_range holds when DOMAIN_RANGE is offered, as input_range does with INPUT_RANGE:
    /// the spec ties both fields to the device offering the feature (5.13.6: "If the
    /// VIRTIO_IOMMU_F_DOMAIN_RANGE feature is offered, domain_range describes the values
    /// supported"), whether or not the driver accepted it.
    bool domain_in_range(std::uint32_t id) const noexcept {
        return !offered(f_domain_range) || (id >= set_.domain_start && id <= set_.domain_end);
    }
    /// The reserved regions the driver can know: PROBE's RESV_MEM properties, so none unless
    /// PROBE was negotiated (a driver that did not accept PROBE cannot send it and cannot avoid
    /// them; 5.13.6.8.1 MSI: "If the endpoint doesn't have a VIRTIO_IOMMU_RESV_MEM_T_MSI
    /// property, then the driver creates an MMIO mapping to the doorbell", so MAP must take it).
    std::span<const reserved_region> presented_regions() const noexcept {
        if (!negotiated(f_probe)) return {};
        return set_.reserved;
    }

    // ---- handlers (spec 5.13.6.3 ATTACH, .4 DETACH, .5 MAP, .6 UNMAP, .7 PROBE; formats/README.md)

    /// ATTACH: reserved or unknown flags INVAL; domain outside domain_range (DOMAIN_RANGE
    /// offered) RANGE; unknown
    /// endpoint NOENT; an existing domain of the other bypass kind INVAL; a new domain beyond
    /// max_domains or without table memory NOMEM. Then the endpoint leaves its old domain (the
    /// domain goes when it was the last) and joins this one (created if new).
    status on_attach(const req_attach& r) {
        const std::uint32_t flags = r.flags, dom = r.domain, ep = r.endpoint;
        // In a group: the endpoint table and the domain this request may create, to undo it.
        if (journal_ != nullptr && !record_endpoints(!domains_.contains(dom), dom)) return status::nomem;
        const std::uint32_t known = negotiated(f_bypass_config) ? attach_f_bypass : 0;
        if (!zeros(r.reserved) || (flags & ~known) != 0) return status::inval;
        if (!domain_in_range(dom)) return status::range;
        if (ep >= endpoints_.size()) return status::noent;
        const bool bypass = (flags & attach_f_bypass) != 0;
        domain* d = find_domain(dom);
        if (d != nullptr) {
            if (d->bypass != bypass) return status::inval;
            if (endpoints_[ep] == dom) return status::ok;
            gone(translations_removed::scope::endpoint, ep);
            leave(ep);
            ++d->endpoints;
            endpoints_[ep] = dom;
            ep_domain_[ep] = d;
            return status::ok;
        }
        // A move out of a domain the endpoint leaves empty frees that domain first.
        const bool frees_one = endpoints_[ep] != no_domain &&
                               domains_.at(static_cast<std::uint32_t>(endpoints_[ep]))->endpoints == 1;
        if (domains_.size() >= std::size_t{set_.max_domains} + (frees_one ? 1u : 0u)) return status::nomem;
        auto nd = std::make_unique<domain>();
        nd->id = dom;
        nd->tag = new_tag();
        nd->bypass = bypass;
        if (!bypass) {
            auto m = map_table<D>::create(domain_cfg_, set_.max_table_bytes, set_.max_mappings);
            if (!m) return status::nomem;
            nd->maps = std::move(*m);
        }
        gone(translations_removed::scope::endpoint, ep);
        leave(ep);
        nd->endpoints = 1;
        endpoints_[ep] = dom;
        ep_domain_[ep] = nd.get();  // the domain object stays where it is inside domains_
        domains_.emplace(dom, std::move(nd));
        return status::ok;
    }

    /// DETACH: unknown endpoint NOENT; domain missing or the endpoint not in it INVAL.
    /// Reserved bytes are ignored (spec). The domain goes with its last endpoint.
    status on_detach(const req_detach& r) {
        const std::uint32_t dom = r.domain, ep = r.endpoint;
        if (journal_ != nullptr && !record_endpoints(false, dom)) return status::nomem;
        if (ep >= endpoints_.size()) return status::noent;
        if (find_domain(dom) == nullptr || endpoints_[ep] != dom) return status::inval;
        gone(translations_removed::scope::endpoint, ep);
        leave(ep);
        return status::ok;
    }

    /// MAP: MAP_UNMAP not negotiated UNSUPP; unknown flags (MMIO without F_MMIO) INVAL;
    /// virt_end < virt_start INVAL; virt_start, phys_start or virt_end + 1 off the granule
    /// RANGE; outside input_range (when INPUT_RANGE is offered), or the physical end wrapping
    /// RANGE; unknown domain NOENT; bypass or shared-table domain INVAL; overlapping a reserved
    /// region the driver can know (PROBE negotiated: `presented_regions`) or a mapping INVAL;
    /// caps NOMEM; beyond the table's input or output size RANGE.
    /// RELAXED negotiated: overlapping mappings are no refusal; map_table::map_relaxed replaces
    /// their overlapped parts (the IOTLB drops the range when translation went) and an exact
    /// repeat changes nothing. In a group or MAP_SG the change is journaled first (NOMEM if
    /// that cannot be).
    status on_map(const req_map& r) {
        if (!negotiated(f_map_unmap)) return status::unsupp;
        const std::uint32_t flags = r.flags;
        const std::uint64_t first = r.virt_start, last = r.virt_end, phys = r.phys_start;
        const std::uint32_t known = map_f_read | map_f_write | (negotiated(f_mmio) ? map_f_mmio : 0);
        if ((flags & ~known) != 0) return status::inval;
        if (last < first) return status::inval;
        const std::uint64_t g = granule();
        if (((first | phys) & (g - 1)) != 0 || ((last + 1) & (g - 1)) != 0) return status::range;
        if (offered(f_input_range) && (first < set_.input_start || last > *set_.input_end)) return status::range;
        if (phys + (last - first) < phys) return status::range;
        domain* d = find_domain(r.domain);
        if (d == nullptr) return status::noent;
        if (d->bypass || !d->maps) return status::inval;
        for (const auto& res : presented_regions())
            if (first <= res.last && res.start <= last) return status::inval;
        if (journal_ != nullptr && !record_space(*d, first, last)) return status::nomem;
        if (!negotiated(f_relaxed)) return d->maps->map(first, last, phys, flags);
        // A new mapping needs no IOTLB invalidation: faults are never cached.
        relaxed_outcome o;
        const status s = d->maps->map_relaxed(first, last, phys, flags, o);
        if (s != status::ok) return s;
        if (o.exact) ++fstats_.relaxed_exact;
        if (o.removed != 0) {
            ++fstats_.relaxed_replaced;
            ++invalidations_;
            iotlb_.invalidate(d->tag, first, last);
            gone(translations_removed::scope::range, d->id, first, last);
        }
        return s;
    }

    /// UNMAP: MAP_UNMAP not negotiated UNSUPP; reserved INVAL (nothing unmapped); virt_end <
    /// virt_start INVAL; unknown domain NOENT; bypass or shared-table domain INVAL; a mapping
    /// crossing either end RANGE with nothing removed. Removes the mappings inside, then drops
    /// their translations from the IOTLB before answering. RELAXED negotiated: no RANGE;
    /// map_table::unmap_relaxed trims or splits the mappings crossing an end (NOMEM: the mapping
    /// cap, or a block split that needs a table).
    status on_unmap(const req_unmap& r) {
        if (!negotiated(f_map_unmap)) return status::unsupp;
        if (!zeros(r.reserved)) return status::inval;
        const std::uint64_t first = r.virt_start, last = r.virt_end;
        if (last < first) return status::inval;
        domain* d = find_domain(r.domain);
        if (d == nullptr) return status::noent;
        if (d->bypass || !d->maps) return status::inval;
        if (journal_ != nullptr && !record_space(*d, first, last)) return status::nomem;
        if (negotiated(f_relaxed)) {
            relaxed_outcome o;
            const status s = d->maps->unmap_relaxed(first, last, o);
            if (s == status::ok && o.removed != 0) {
                ++fstats_.relaxed_replaced;
                ++invalidations_;
                iotlb_.invalidate(d->tag, first, last);
                gone(translations_removed::scope::range, d->id, first, last);
            }
            return s;
        }
        removed_.clear();
        const status s = d->maps->unmap(first, last, &removed_);
        for (const auto& m : removed_) {
            iotlb_.invalidate(d->tag, m.first, m.last);
            gone(translations_removed::scope::range, d->id, m.first, m.last);
        }
        if (!removed_.empty()) ++invalidations_;
        return s;
    }

    // ---- the fast protocol (README "Fast protocol")

    /// MAP_SG framing: readable part shorter than the fixed 32 bytes or no room for the tail:
    /// unanswered; MAP_SG offered but not negotiated UNSUPP; then `on_map_sg`.
    std::uint32_t on_map_sg_request(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        constexpr std::uint8_t type = static_cast<std::uint8_t>(req_type::map_sg);
        if (in.size() < sizeof(req_map_sg) || out.size() < sizeof(req_tail)) return unanswered(type);
        return answer(out, 0, type, on_map_sg(in));
    }

    /// MAP_SG: not negotiated UNSUPP; MAP_UNMAP not negotiated UNSUPP; nr_elems 0 or above
    /// map_sg_max INVAL; a readable part other than 32 + 8·nr_elems bytes INVAL; size 0 INVAL;
    /// nr_elems · size wrapping the address space RANGE; then element by element MAP's
    /// refusals (relaxed rules with RELAXED). All or nothing: a refused element undoes the
    /// elements before it and the request answers its status.
    status on_map_sg(std::span<const std::uint8_t> in) {
        if (!negotiated(f_map_sg) || !negotiated(f_map_unmap)) return status::unsupp;
        req_map_sg r;
        std::memcpy(static_cast<void*>(&r), in.data(), sizeof r);
        const std::uint32_t n = r.nr_elems;
        const std::uint64_t size = r.size, start = r.virt_start;
        if (n == 0 || n > set_.map_sg_max) return status::inval;
        if (in.size() != sizeof(req_map_sg) + std::size_t{n} * 8) return status::inval;
        if (size == 0) return status::inval;
        if (size > ~std::uint64_t{0} / n || start + (size * n - 1) < start) return status::range;
        // Inside a group the group's journal records the elements; alone, a journal of our own.
        std::optional<journal> own;
        if (journal_ == nullptr) {
            try {
                own.emplace();
                own->steps.reserve(n);
            } catch (...) {
                return status::nomem;
            }
            journal_ = &*own;
        }
        const std::size_t mark = journal_->steps.size();
        status s = status::ok;
        for (std::uint32_t i = 0; i < n && s == status::ok; ++i) {
            req_map m;
            m.head.type = static_cast<std::uint8_t>(req_type::map);
            m.domain = r.domain;
            m.virt_start = start + std::uint64_t{i} * size;
            m.virt_end = start + std::uint64_t{i} * size + (size - 1);
            m.phys_start = detail::load<std::uint64_t>(in, sizeof(req_map_sg) + std::size_t{i} * 8);
            m.flags = r.flags;
            s = on_map(m);
        }
        if (s != status::ok) rollback(mark);
        if (own) journal_ = nullptr;
        if (s == status::ok) {
            ++fstats_.map_sg;
            fstats_.map_sg_elems += n;
        }
        return s;
    }

    /// The readable length of a group member at `at` (its head already read), or 0 when it
    /// may not be in a group or does not fit.
    std::size_t member_length(std::span<const std::uint8_t> in, std::size_t at, std::uint8_t type) const noexcept {
        std::size_t len = 0;
        switch (static_cast<req_type>(type)) {
        case req_type::attach: len = offsetof(req_attach, tail); break;
        case req_type::detach: len = offsetof(req_detach, tail); break;
        case req_type::map: len = offsetof(req_map, tail); break;
        case req_type::unmap: len = offsetof(req_unmap, tail); break;
        case req_type::map_sg:
            if (in.size() - at < sizeof(req_map_sg)) return 0;
            len = sizeof(req_map_sg) +
                  std::size_t{detail::load<std::uint32_t>(in, at + offsetof(req_map_sg, nr_elems))} * 8;
            break;
        default: return 0;
        }
        return in.size() - at < len ? 0 : len;
    }

    /// A group: requests back to back in the readable part, each with G, the last with L; one
    /// tail in the writable part. Framing (checked before anything runs; INVAL, nothing done):
    /// a member without G or with a head bit 10–31, a type a group may not hold (only ATTACH,
    /// DETACH, MAP, UNMAP, MAP_SG), a member that does not fit, no L, bytes after L, more than
    /// group_max members. No room for the tail: unanswered. Then the members run in order;
    /// the first that fails stops the group, everything the members before it did is undone,
    /// and the tail carries its status (OK when all succeeded).
    std::uint32_t on_group(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        const std::uint8_t first_type = in[0];
        if (out.size() < sizeof(req_tail)) return unanswered(first_type);
        struct member {
            std::size_t at, len;
            std::uint8_t type;
        };
        std::vector<member> members;
        std::size_t at = 0;
        bool last = false;
        while (!last) {
            if (in.size() - at < sizeof(req_head)) return answer(out, 0, first_type, status::inval);
            const std::uint32_t word = detail::load<std::uint32_t>(in, at);
            const auto type = static_cast<std::uint8_t>(word & 0xff);
            if ((word & req_f_group) == 0 || (word & ~(std::uint32_t{0xff} | req_f_mask)) != 0)
                return answer(out, 0, first_type, status::inval);
            const std::size_t len = member_length(in, at, type);
            if (len == 0 || members.size() >= set_.group_max) return answer(out, 0, first_type, status::inval);
            try {
                members.push_back({at, len, type});
            } catch (...) {
                return answer(out, 0, first_type, status::nomem);
            }
            at += len;
            last = (word & req_f_last) != 0;
            if (!last && at == in.size()) return answer(out, 0, first_type, status::inval);
        }
        if (at != in.size()) return answer(out, 0, first_type, status::inval);
        journal j;
        try {
            j.steps.reserve(members.size());
            j.graveyard.reserve(members.size());
        } catch (...) {
            return answer(out, 0, first_type, status::nomem);
        }
        ++fstats_.groups;
        journal_ = &j;
        status s = status::ok;
        for (const member& m : members) {
            s = run_member(in.subspan(m.at, m.len), m.type);
            ++stats_.by_type_status[m.type][static_cast<std::uint8_t>(s)];
            if (s != status::ok) break;
        }
        if (s != status::ok) {
            ++fstats_.groups_failed;
            rollback(0);
        }
        journal_ = nullptr;  // commit: the graveyard's domains go now
        if (fstats_.rollback_failures != rollback_failures_seen_) {
            rollback_failures_seen_ = fstats_.rollback_failures;
            s = status::deverr;
        }
        out[0] = static_cast<std::uint8_t>(s);
        out[1] = out[2] = out[3] = 0;
        return sizeof(req_tail);
    }
    status run_member(std::span<const std::uint8_t> in, std::uint8_t type) {
        switch (static_cast<req_type>(type)) {
        case req_type::attach: return decode<req_attach>(in, &device::on_attach);
        case req_type::detach: return decode<req_detach>(in, &device::on_detach);
        case req_type::map: return decode<req_map>(in, &device::on_map);
        case req_type::unmap: return decode<req_unmap>(in, &device::on_unmap);
        case req_type::map_sg: return offered(f_map_sg) ? on_map_sg(in) : status::unsupp;
        default: return status::inval;
        }
    }
    template <class Req>
    status decode(std::span<const std::uint8_t> in, status (device::*fn)(const Req&)) {
        Req req;
        std::memcpy(static_cast<void*>(&req), in.data(), offsetof(Req, tail));
        return (this->*fn)(req);
    }

    /// What undoes the changes of a group or a MAP_SG: per change, either a domain's mappings
    /// around the range as they were, or the endpoint table as it was (ATTACH / DETACH) with
    /// the domains the change created or freed. Freed domains wait in the graveyard.
    struct journal {
        struct step {
            domain* space = nullptr;  ///< a MAP/UNMAP change of this domain's mappings
            typename map_table<D>::snapshot snap;
            std::vector<std::uint64_t> endpoints;  ///< an ATTACH / DETACH: the endpoint table before
            std::size_t graveyard_from = 0;
            bool created = false;
            std::uint32_t domain_id = 0;
        };
        std::vector<step> steps;
        /// Map nodes, so that bringing a domain back allocates nothing.
        std::vector<typename std::map<std::uint32_t, std::unique_ptr<domain>>::node_type> graveyard;
    };
    /// Records how to undo a change of `d`'s mappings in [first, last]; false: out of memory.
    bool record_space(domain& d, std::uint64_t first, std::uint64_t last) noexcept {
        try {
            typename journal::step st;
            st.space = &d;
            st.snap = d.maps->take(first, last);
            journal_->steps.push_back(std::move(st));
            return true;
        } catch (...) {
            return false;
        }
    }
    /// Records how to undo an ATTACH / DETACH; false: out of memory.
    bool record_endpoints(bool created, std::uint32_t id) noexcept {
        try {
            typename journal::step st;
            st.endpoints = endpoints_;
            st.graveyard_from = journal_->graveyard.size();
            st.created = created;
            st.domain_id = id;
            journal_->steps.push_back(std::move(st));
            return true;
        } catch (...) {
            return false;
        }
    }
    /// Undoes the journal's steps from the last down to `mark`.
    void rollback(std::size_t mark) noexcept {
        auto& steps = journal_->steps;
        while (steps.size() > mark) {
            auto& st = steps.back();
            ++fstats_.rollbacks;
            if (st.space != nullptr) {
                if (!st.space->maps->restore(st.snap)) ++fstats_.rollback_failures;
                ++invalidations_;
                iotlb_.invalidate(st.space->tag, st.snap.lo, st.snap.hi);
                gone(translations_removed::scope::range, st.space->id, st.snap.lo, st.snap.hi);
            } else {
                gone_all();
                if (st.created) domains_.erase(st.domain_id);
                auto& g = journal_->graveyard;
                while (g.size() > st.graveyard_from) {
                    domains_.insert(std::move(g.back()));
                    g.pop_back();
                }
                endpoints_ = std::move(st.endpoints);
                for (auto& [id, d] : domains_) d->endpoints = 0;
                for (std::size_t ep = 0; ep < endpoints_.size(); ++ep) {
                    domain* d = nullptr;
                    if (endpoints_[ep] != no_domain) {
                        d = domains_.at(static_cast<std::uint32_t>(endpoints_[ep])).get();
                        ++d->endpoints;
                    }
                    ep_domain_[ep] = d;
                }
            }
            steps.pop_back();
        }
    }

    /// PROBE (5.13.6.7, properties 5.13.6.8): not offered → unanswered; the readable part must be the 72 bytes;
    /// offered but not negotiated UNSUPP (as MAP without MAP_UNMAP; nothing written but the
    /// tail, in the last 4 bytes); unknown endpoint NOENT; a writable part smaller than
    /// probe_size + 4 INVAL (no property written, the tail in its last 4 bytes). Properties:
    /// one RESV_MEM per reserved region, back to back, the rest zero; used length probe_size + 4.
    std::uint32_t on_probe(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        constexpr std::uint8_t type = static_cast<std::uint8_t>(req_type::probe);
        if (!offered(f_probe)) return unanswered(type);
        if (in.size() < sizeof(req_probe) || out.size() < sizeof(req_tail)) return unanswered(type);
        const std::size_t need = std::size_t{set_.probe_size} + sizeof(req_tail);
        auto refuse = [&](status s) {  // no property written, the tail in the last 4 bytes
            std::fill(out.begin(), out.end(), std::uint8_t{0});
            return answer(out, out.size() - sizeof(req_tail), type, s);
        };
        if (in.size() > sizeof(req_probe)) return refuse(status::inval);
        if (!negotiated(f_probe)) return refuse(status::unsupp);
        if (out.size() < need) return refuse(status::inval);
        req_probe req;
        std::memcpy(static_cast<void*>(&req), in.data(), sizeof req);
        std::fill(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(need), std::uint8_t{0});
        if (req.endpoint.get() >= endpoints_.size()) return answer(out, set_.probe_size, type, status::noent);
        std::size_t at = 0;
        for (const auto& res : set_.reserved) {
            probe_resv_mem p;
            p.head.type = probe_t_resv_mem;
            p.head.length = sizeof(probe_resv_mem) - sizeof(probe_property);
            p.subtype = res.subtype;
            p.start = res.start;
            p.end = res.last;
            std::memcpy(out.data() + at, &p, sizeof p);
            at += sizeof p;
        }
        return answer(out, set_.probe_size, type, status::ok);
    }

    /// PROBE_TABLE (formats/README.md): not offered → unanswered; a readable part longer than
    /// the request INVAL; TABLE_SHARING offered but not negotiated UNSUPP (as every request of
    /// a feature the driver did not accept); address_space is the endpoint (unknown NOENT);
    /// flags must be 0 (INVAL); a writable part without room for the 8-byte header and the
    /// tail INVAL. The formats fill the writable part, tail at its end.
    std::uint32_t on_probe_table(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        constexpr std::uint8_t type = static_cast<std::uint8_t>(req_type::probe_table);
        if (!offered(f_table_sharing)) return unanswered(type);
        if (in.size() < sizeof(req_probe_table) || out.size() < sizeof(req_tail)) return unanswered(type);
        std::fill(out.begin(), out.end(), std::uint8_t{0});
        const std::size_t tail_at = out.size() - sizeof(req_tail);
        if (in.size() > sizeof(req_probe_table)) return answer(out, tail_at, type, status::inval);
        if (!negotiated(f_table_sharing)) return answer(out, tail_at, type, status::unsupp);
        req_probe_table req;
        std::memcpy(static_cast<void*>(&req), in.data(), sizeof req);
        if (req.flags.get() != 0) return answer(out, tail_at, type, status::inval);
        if (req.address_space.get() >= endpoints_.size()) return answer(out, tail_at, type, status::noent);
        if (tail_at < sizeof(probe_table_reply)) return answer(out, tail_at, type, status::inval);
        // PAGE_REQUESTS negotiated: formats that can stall say so (cap_stall).
        const bool stall = negotiated(f_page_requests);
        if (offered_.empty() || offered_stall_ != stall) offered_ = sharing::offered_formats(formats_, stall);
        offered_stall_ = stall;
        sharing::write_probe_table(offered_, set_.max_contexts, out.first(tail_at));
        return answer(out, tail_at, type, status::ok);
    }

    /// ATTACH_TABLE: TABLE_SHARING not negotiated UNSUPP (the request is unanswered when it
    /// is not offered: `handle`); unknown domain (address_space) NOENT; bypass domain, or one holding
    /// mappings INVAL; then validate_attach's refusals (formats/README.md); then the table
    /// must be found (context 0) and, folded, fit the shadow (NOMEM / UNSUPP). A domain that
    /// had a table gets the new one; its old translations are gone (a new IOTLB tag).
    status on_attach_table(const req_attach_table& r) {
        if (!negotiated(f_table_sharing)) return status::unsupp;
        domain* d = find_domain(r.address_space);
        if (d == nullptr) return status::noent;
        if (d->bypass || (d->maps && d->maps->mapping_count() != 0)) return status::inval;
        auto b = sharing::validate_attach(formats_, r, guest_,
                                          sharing::attach_limits{set_.max_contexts, negotiated(f_page_requests)});
        if (!b) return b.why().code;
        auto space = make_space(*b);
        if (!space) return space.why().code;
        d->maps.reset();
        d->table.emplace(std::move(*b));
        d->shared = std::move(*space);
        d->tag = new_tag();
        gone(translations_removed::scope::domain, d->id);
        d->table_seq = ++table_seq_;  // page requests of the old table close (sweep_page_requests)
        return status::ok;
    }

    /// INVALIDATE: TABLE_SHARING not negotiated UNSUPP; unknown domain NOENT; a domain without
    /// a table INVAL; decode_invalidate's
    /// refusals. Then the shared space re-reads what it must (folded) and the IOTLB drops the
    /// range (VADDR) or the whole address space (SINGLE, TABLE) before the answer.
    status on_invalidate(const req_invalidate& r) {
        if (!negotiated(f_table_sharing)) return status::unsupp;
        domain* d = find_domain(r.address_space);
        if (d == nullptr) return status::noent;
        if (!d->table || !d->shared) return status::inval;
        auto inv = sharing::decode_invalidate(r, *d->table);
        if (!inv) return inv.why().code;
        const status s = d->shared->invalidate(*inv);
        if (inv->kind == invalidate_kind::vaddr) {
            if (inv->context == 0) {
                iotlb_.invalidate(d->tag, inv->first, inv->last);
                gone(translations_removed::scope::range, d->id, inv->first, inv->last);
            }
        } else {
            d->tag = new_tag();
            gone(translations_removed::scope::domain, d->id);
        }
        return s;
    }

    checked<std::unique_ptr<shared_space>> make_space(const binding& b) {
        return b.with_engine([&](const auto& bound) -> checked<std::unique_ptr<shared_space>> {
            using F = typename std::decay_t<decltype(bound)>::format;
            if constexpr (F::guest_shareable) {
                if (set_.sharing == shared_mode::nested)
                    return nested_space<F, S2, binding>::create(b, bound.cfg, guest_, s2_);
                return folded_space<F, S2, D, binding>::create(b, bound.cfg, guest_, s2_, domain_cfg_,
                                                               set_.max_table_bytes, set_.fold_fetch_budget);
            } else {
                return refusal{status::unsupp, "format: stage-2 only"};
            }
        });
    }

    // ---- DMA

    // The DMA path's walks: lookup_leaf, the translation without lookup's whole record.
    // `accesses` counts the entries read: one per level from the top down to the leaf's.
    space_walk walk_stage2(std::uint64_t gpa) const noexcept {
        const leaf_translation w = s2_.lookup_leaf(typename S2::input_address{gpa});
        if (!w.mapped()) return {};
        return space_walk{true, w.oa, w.size_lg2, w.perm, s2_.geo().levels - w.level};
    }
    space_walk walk_domain(domain& d, std::uint64_t iova) {
        if (d.shared) return d.shared->translate(iova);
        if (!d.maps) return {};
        const leaf_translation w1 = d.maps->lookup_leaf(iova);
        if (!w1.mapped()) return {};
        const space_walk w2 = walk_stage2(w1.oa);
        if (!w2.ok) return {};
        // The nested rule, as for shared tables (nested/types.hpp combine_prot): READ/WRITE from
        // both stages, NOEXEC/PRIV from either, the more restrictive memory type.
        const memory_type m = nested::combine_memory(nested::memory_of(w1.perm), nested::memory_of(w2.perm));
        const prot p = nested::combine_prot(w1.perm, w2.perm, m);
        return space_walk{true, w2.hpa, std::min<unsigned>(w1.size_lg2, w2.size_lg2), p,
                          d.maps->table().geo().levels - w1.level + w2.accesses};
    }
    dma_result& fault_at(dma_result& r, std::uint32_t ep, std::uint64_t addr, nested::access_kind a, std::uint8_t reason) {
        ++tstats_.faults;
        dma_fault f;
        f.reason = reason;
        f.endpoint = ep;
        f.address = addr;
        f.flags = fault_f_address | (a == nested::access_kind::write ? fault_f_write : fault_f_read) |
                  (a == nested::access_kind::exec ? fault_f_exec : 0);
        f.delivered = post_fault(f);
        if (f.delivered) ++tstats_.faults_delivered;
        else ++tstats_.faults_dropped;
        r.fault = f;
        return r;
    }
    /// Writes a virtio_iommu_fault into the next eventq buffer (24 bytes; a smaller buffer is
    /// returned unwritten, with used length 0, and the event dropped).
    bool post_fault(const dma_fault& f) {
        virtio::fault ev;
        ev.reason = f.reason;
        ev.flags = f.flags;
        ev.endpoint = f.endpoint;
        ev.address = f.address;
        return post_event(&ev, sizeof ev);
    }
    /// Writes `size` bytes into the next eventq buffer that holds them; smaller buffers are
    /// returned unwritten (used length 0). False: no buffer (the event is dropped).
    bool post_event(const void* ev, std::size_t size) {
        if (!eventq_) return false;
        while (auto p = eventq_->pop()) {
            if (p->error != chain_error::none || p->c.writable_len < size) {
                eventq_->push_used(p->c.head, 0);
                continue;
            }
            const auto* b = static_cast<const std::uint8_t*>(ev);
            if (!eventq_->write(p->c, 0, std::span<const std::uint8_t>(b, size))) {
                eventq_->push_used(p->c.head, 0);
                continue;
            }
            eventq_->push_used(p->c.head, static_cast<std::uint32_t>(size));
            return true;
        }
        return false;
    }

    // ---- page requests (README.md "Page requests")

    static std::uint32_t access_flags(nested::access_kind a) noexcept {
        return a == nested::access_kind::write ? fault_f_write
               : a == nested::access_kind::exec ? fault_f_read | fault_f_exec
                                                  : fault_f_read;
    }
    static constexpr std::uint64_t request_page_mask = (std::uint64_t{1} << device_iotlb::page_lg2) - 1;

    /// A walk of [pos, last] failed (not mapped, or not for `access`): the MAPPING fault, or in
    /// a shared table attached with F_FAULT a stall (`may_stall`: not for a retry).
    dma_result& miss(dma_result& r, std::uint32_t ep, domain* d, std::uint64_t pos, std::uint64_t last,
                     nested::access_kind access, bool may_stall) {
        const bool faults = d != nullptr && d->table && (d->table->flags() & table_f_fault) != 0;
        if (!may_stall || !faults || !negotiated(f_page_requests)) return fault_at(r, ep, pos, access, fault_r_mapping);
        if (needs_reset()) {
            abort_page_requests([](const page_request&) { return true; });
            ++prstats_.not_stalled;
            return fault_at(r, ep, pos, access, fault_r_mapping);
        }
        const stalled_access a{next_token_ + 1, ep, pos, last, access};
        const std::uint64_t page = pos & ~request_page_mask;
        page_request* open = prq_.find(ep, 0, page);
        bool stalled = false;
        if (open != nullptr) {
            stalled = prq_.can_join() && reserve_completion() && prq_.join(*open, a);
            if (stalled) ++prstats_.joined;
        } else if (prq_.can_open(ep) && reserve_completion()) {
            page_request pr;
            pr.id = prq_.next_id();
            pr.endpoint = ep;
            pr.domain = d->id;
            pr.context = 0;  // the DMA path translates context 0 (shared_space.hpp)
            pr.page = page;
            pr.flags = fault_f_address | access_flags(access);
            pr.posted_us = now_us_;
            pr.table_seq = d->table_seq;
            page_request_event ev;
            ev.flags = pr.flags;
            ev.endpoint = ep;
            ev.context = pr.context;
            ev.address = page;
            ev.address_space = pr.domain;
            ev.id = pr.id;
            const std::uint32_t id = pr.id;
            // Booked first (it may fail for memory), then posted (undone when no buffer).
            if (prq_.open(std::move(pr), a)) {
                stalled = post_event(&ev, sizeof ev);
                if (stalled) ++prstats_.requests;
                else (void)prq_.close(id);
            }
        }
        if (!stalled) {
            ++prstats_.not_stalled;
            return fault_at(r, ep, pos, access, fault_r_mapping);
        }
        r.pending = ++next_token_;
        return r;
    }
    /// Room for every waiting access and one more among the completions, so that completing
    /// never allocates. False when memory runs out.
    bool reserve_completion() noexcept {
        try {
            completions_.reserve(completions_.size() + prq_.stalled() + 1);
            return true;
        } catch (...) {
            return false;
        }
    }
    /// The accesses of `r` complete with the fault `reason` (posted on the eventq as any).
    void fail_waiting(page_request& r, std::uint8_t reason) {
        for (const stalled_access& a : r.waiting) {
            dma_completion c{a.token, a.endpoint, a.iova, {}};
            fault_at(c.result, a.endpoint, a.iova, a.access, reason);
            ++prstats_.completed_fault;
            completions_.push_back(c);  // room reserved
        }
    }
    /// The accesses of `r` walk again (no stall this time): the rest of their 4 KiB page.
    void retry_waiting(page_request& r) {
        for (const stalled_access& a : r.waiting) {
            const std::uint64_t page_last = a.iova | request_page_mask;
            const std::uint64_t last = std::min(a.last, page_last);
            dma_completion c{a.token, a.endpoint, a.iova, translate_dma(a.endpoint, a.iova, last - a.iova + 1, a.access, false)};
            ++(c.result.ok() ? prstats_.completed_ok : prstats_.completed_fault);
            completions_.push_back(c);  // room reserved
        }
    }
    /// Closes the page requests `pred` selects; their accesses fail (DOMAIN when the endpoint
    /// is no longer in the request's domain, MAPPING otherwise).
    template <class Pred>
    void abort_page_requests(Pred pred) {
        std::uint64_t n = 0;
        prq_.close_if(pred, [&](page_request& r) {
            ++n;
            const bool in_domain = r.endpoint < endpoints_.size() && endpoints_[r.endpoint] == r.domain;
            fail_waiting(r, in_domain ? fault_r_mapping : fault_r_domain);
        });
        prstats_.aborted += n;
    }
    /// After a request: page requests whose endpoint left the domain, or whose domain has
    /// another table now, close.
    void sweep_page_requests() {
        abort_page_requests([&](const page_request& r) {
            if (r.endpoint >= endpoints_.size() || endpoints_[r.endpoint] != r.domain) return true;
            auto it = domains_.find(r.domain);
            return it == domains_.end() || it->second->table_seq != r.table_seq;
        });
    }

    /// PAGE_REPLY: PAGE_REQUESTS not negotiated UNSUPP (unanswered when not offered:
    /// `handle`); reserved bytes or a reply other than HANDLED / FAILED INVAL; an id that is
    /// not open (never posted, already answered, timed out or aborted) INVAL; an address_space
    /// other than the request's domain INVAL. Then the request closes: HANDLED retries its
    /// accesses' walks, FAILED completes them with the MAPPING fault. `paddr` is not checked:
    /// the guest's table is the authority.
    status on_page_reply(const req_page_reply& r) {
        if (!negotiated(f_page_requests)) return status::unsupp;
        const std::uint32_t reply = r.reply;
        if (!zeros(r.reserved) || (reply != page_reply_handled && reply != page_reply_failed)) return status::inval;
        const page_request* open = prq_.find_id(r.id);
        if (open == nullptr || open->domain != r.address_space.get()) return status::inval;
        auto pr = prq_.close(r.id);
        if (reply == page_reply_handled) {
            ++prstats_.replies_handled;
            retry_waiting(*pr);
        } else {
            ++prstats_.replies_failed;
            fail_waiting(*pr, fault_r_mapping);
        }
        return status::ok;
    }

    guest_ram& host_;
    guest_view guest_;
    stage2_table& s2_;
    typename D::config domain_cfg_;
    device_settings set_;
    formats_type formats_ = Host::table_formats();
    std::vector<virtio::pg_format> offered_;
    bool offered_stall_ = false;  ///< offered_ carries cap_stall
    std::uint64_t driver_features_ = 0;
    std::vector<std::uint64_t> endpoints_;  ///< domain ID per endpoint, or no_domain
    /// The domain of each endpoint (nullptr: none), kept with endpoints_ wherever it changes,
    /// so that translate finds it without a search of domains_.
    std::vector<domain*> ep_domain_;
    std::map<std::uint32_t, std::unique_ptr<domain>> domains_;
    device_iotlb iotlb_;
    std::uint64_t last_tag_ = identity_tag;
    std::uint8_t bypass_;
    std::optional<device_queue<guest_view>> requestq_, eventq_;
    std::vector<mapping> removed_;
    typename device_queue<guest_view>::popped chain_;  ///< the requestq chain being answered (buffers reused)
    std::vector<std::uint8_t> reply_;                  ///< its reply (reused)
    journal* journal_ = nullptr;  ///< set while a group or MAP_SG runs
    translation_observer* observer_ = nullptr;  ///< told when translations go (requests only)
    std::uint64_t invalidations_ = 0;
    std::uint64_t rollback_failures_seen_ = 0;
    virtio::fast_stats fstats_;
    request_stats stats_;
    translate_stats tstats_;
    // Page requests (README.md "Page requests").
    page_request_book prq_;
    std::vector<dma_completion> completions_;  ///< room for every stalled access (reserve_completion)
    virtio::page_request_stats prstats_;
    std::uint64_t now_us_ = 0;
    std::uint64_t next_token_ = 0;
    std::uint64_t table_seq_ = 0;
};

} // namespace iopgtable::virtio
