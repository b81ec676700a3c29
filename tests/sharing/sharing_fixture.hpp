// SPDX-License-Identifier: MIT
#pragma once
/// @file sharing_fixture.hpp
/// What the page-table-sharing tests share: the simulated device (every format of
/// `all_formats`, each up to the largest of its sample configurations, with hardware dirty state
/// where any sample has it), raw ATTACH_TABLE / INVALIDATE builders for hand-made requests, and a
/// driver-side table in guest RAM with a few mappings to translate through a binding.
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/hana/transform.hpp>
#include <catch2/catch.hpp>
#include <iopgtable/formats/all.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/sharing/invalidate.hpp>
#include <iopgtable/sharing/negotiation.hpp>

#include "support/format_list.hpp"

namespace iopgtable::test {

/// The device's limits for F: the widest sample configuration (sharing::widest_sample); when
/// it does not track dirty state and another sample does (the 64K-granule LPAE and amd-v1
/// samples), dirty tracking is added (LPAE quirk hd, track_dirty elsewhere), so that every
/// sample configuration is within the limits.
template <class F>
typename F::config device_limits() {
    const auto cfgs = F::sample_configs();
    auto best = sharing::widest_sample<F>();
    if constexpr (has_dirty_tracking<F>) {
        for (const auto& c : cfgs) {
            if (!F::dirty_tracking(c) || F::dirty_tracking(best)) continue;
            if constexpr (requires { best.track_dirty; }) best.track_dirty = true;
            else if constexpr (requires { best.quirks; }) best.quirks |= c.quirks;
        }
        for (const auto& c : cfgs)
            if (F::dirty_tracking(c)) REQUIRE(F::dirty_tracking(best));
    }
    REQUIRE(F::make_geometry(best).ok());
    return best;
}

/// A device walking every format of the list up to device_limits<F>(), tag bits `tag_bits`.
inline auto full_device(std::uint8_t tag_bits = 16) {
    return boost::hana::transform(all_formats, [tag_bits](auto t) {
        using F = typename decltype(t)::type;
        return sharing::device_format<F>{device_limits<F>(), tag_bits};
    });
}
using device_t = decltype(full_device());
using binding_t = sharing::binding_for<device_t>;

/// `device` with only the formats for which `keep(F)` is true enabled.
template <class Device, class Keep>
auto only(Device device, Keep keep) {
    return boost::hana::transform(device, [&](auto d) {
        using F = typename decltype(d)::format;
        d.enabled = d.enabled && keep(boost::hana::type_c<F>);
        return d;
    });
}

/// Guest RAM of the tests: 64 MiB at 1 GiB unless said otherwise.
inline constexpr std::uint64_t ram_base = 0x40000000, ram_size = 64ull << 20;

/// An ATTACH_TABLE with the given fields; `config` is copied (64 bytes).
inline virtio::req_attach_table attach_request(std::uint32_t model, const sharing::blob& config, std::uint64_t table,
                                               std::uint32_t flags = 0, std::uint32_t nr_contexts = 0) {
    virtio::req_attach_table r;
    r.head.type = static_cast<std::uint8_t>(virtio::req_type::attach_table);
    r.model = model;
    r.table = table;
    r.flags = flags;
    r.nr_contexts = nr_contexts;
    std::memcpy(r.config, config.data(), 64);
    return r;
}

/// Config blobs laid out by hand from formats/README.md (not through encode_config).
inline sharing::blob lpae_blob(std::uint64_t tcr, std::uint64_t mair = 0xf404ff44, std::uint32_t asid = 0) {
    sharing::blob b{};
    const le32 variant{1};
    const le64 t{tcr}, m{mair};
    const le32 a{asid};
    std::memcpy(b.data() + 0, variant.bytes.data(), 4);
    std::memcpy(b.data() + 8, t.bytes.data(), 8);
    std::memcpy(b.data() + 16, m.bytes.data(), 8);
    std::memcpy(b.data() + 24, a.bytes.data(), 4);
    return b;
}
inline sharing::blob v7s_blob(std::uint32_t tcr = 0, std::uint32_t prrr = 0x800b8204, std::uint32_t nmrr = 0x40004000,
                              std::uint32_t asid = 0) {
    sharing::blob b{};
    const le32 w[5] = {3, tcr, prrr, nmrr, asid};
    for (int i = 0; i < 5; ++i) std::memcpy(b.data() + 4 * i, w[i].bytes.data(), 4);
    return b;
}
inline sharing::blob vtd_blob(std::uint32_t width = 48, std::uint32_t domain = 0, std::uint32_t variant = 1) {
    sharing::blob b{};
    const le32 w[3] = {variant, width, domain};
    for (int i = 0; i < 3; ++i) std::memcpy(b.data() + 4 * i, w[i].bytes.data(), 4);
    return b;
}

/// TCR_EL1 as Linux writes it for a coherent stage-1 walk (formats/arm-lpae/vectors.txt):
/// T0SZ, IRGN0 = ORGN0 = WBWA, SH0 inner, TG0 (0 4k, 1 64k, 2 16k), EPD1, IPS.
constexpr std::uint64_t tcr_of(unsigned ias, std::uint64_t tg0, std::uint64_t ips) noexcept {
    return (64 - ias) | 0x3500u | (tg0 << 14) | (1u << 23) | (ips << 32);
}
inline constexpr std::uint64_t tcr_ha_hd = (std::uint64_t{1} << 39) | (std::uint64_t{1} << 40);

/// An INVALIDATE with the given fields.
inline virtio::req_invalidate invalidate_request(std::uint32_t flags, std::uint32_t context, std::uint64_t virt_addr,
                                                 std::uint64_t range_size) {
    virtio::req_invalidate r;
    r.head.type = static_cast<std::uint8_t>(virtio::req_type::invalidate);
    r.flags = flags;
    r.context = context;
    r.virt_addr = virt_addr;
    r.range_size = range_size;
    return r;
}

/// One mapping a driver made: [iova, iova + size) → pa with `perm`.
struct mapping {
    std::uint64_t iova, pa, size;
    prot perm;
};

/// Maps, in `pt`, two pages of every page size but the largest (one size per slot of the second
/// largest size, from slot 1), one block of the largest size at iova = that size, and the last
/// smallest page of the input space (unless the block reaches it); page sizes more than half
/// the input space are left out. Output addresses are aligned, below 2^OAS, mostly near it
/// (high output bits), and shifted by `pa_salt` (0..2) slots. Throws std::runtime_error if a
/// map fails (usable inside a rapidcheck property).
template <class PT>
std::vector<mapping> map_sample(PT& pt, std::uint64_t pa_salt = 0) {
    using F = typename PT::format;
    const geometry g = pt.geo();
    std::vector<std::uint64_t> sizes;
    for (std::uint64_t s : page_sizes(g))
        if (s <= ias_end(g) / 2) sizes.push_back(s);
    if (sizes.empty()) throw std::runtime_error("no page size fits twice in the input space");
    const std::uint64_t largest = sizes.back(), small = sizes.front();
    const std::uint64_t slot = sizes.size() > 1 ? sizes[sizes.size() - 2] : largest;
    const std::uint64_t top = oas_end(g);
    auto below_top = [top](std::uint64_t n) { return n < top ? top - n : 0; };
    const prot perms[] = {prot::read | prot::write, prot::read, prot::read | prot::write | prot::cache,
                          prot::read | prot::noexec};
    std::vector<mapping> out;
    for (std::size_t i = 0; i + 1 < sizes.size(); ++i)
        out.push_back({(i + 1) * slot, below_top((i + 2 + pa_salt) * slot), 2 * sizes[i], perms[i % 4]});
    out.push_back({largest, below_top((2 + pa_salt) * largest), largest, prot::read | prot::write});
    if (ias_end(g) - small >= 2 * largest)
        out.push_back({ias_end(g) - small, small * (3 + pa_salt), small, prot::read | prot::write | prot::cache});
    for (const auto& m : out) {
        if (auto r = pt.map(in_addr<F>(m.iova), pa_t{m.pa}, length_t{m.size}, m.perm); !r) {
            std::ostringstream s;
            s << std::hex << "map iova 0x" << m.iova << " pa 0x" << m.pa << " size 0x" << m.size << ": "
              << to_string(r.error());
            throw std::runtime_error(s.str());
        }
    }
    return out;
}

/// Every leaf entry of a table engine (a driver's or one over a bound table), in order.
/// Throws std::runtime_error if the visit fails.
template <class PT>
std::vector<dump_entry> leaves_of(const PT& pt) {
    std::vector<dump_entry> out;
    auto r = pt.visit_all([&](const auto& e) {
        out.push_back({e.iova, e.level, e.size_lg2, static_cast<std::uint64_t>(e.raw)});
        return true;
    });
    if (!r) throw std::runtime_error("visit_all: " + std::string(to_string(r.error())));
    return out;
}

/// The le32 at `at` of a wire byte array.
inline std::uint32_t le32_at(const std::uint8_t* bytes, std::size_t at) {
    le32 v;
    std::memcpy(v.bytes.data(), bytes + at, 4);
    return v.get();
}

/// Addresses worth translating around `maps`: each mapping's first, a middle and its last byte,
/// the bytes just before and after it, 0, the last input address and the first one beyond.
inline std::vector<std::uint64_t> probe_addresses(const std::vector<mapping>& maps, const geometry& g) {
    std::vector<std::uint64_t> v{0, ias_end(g) - 1, ias_end(g), ias_end(g) / 2 + 0x1234};
    for (const auto& m : maps) {
        v.push_back(m.iova);
        v.push_back(m.iova + m.size / 2 + 42);
        v.push_back(m.iova + m.size - 1);
        v.push_back(m.iova - 1);
        v.push_back(m.iova + m.size);
    }
    return v;
}

/// "" when the binding translates `va` in `context` exactly as the driver's `pt` looks it up,
/// else the difference.
template <class PT, class Binding>
std::string translation_difference(const PT& pt, const Binding& b, guest_ram& ram, std::uint32_t context,
                                   std::uint64_t va) {
    using F = typename PT::format;
    const auto want = pt.lookup(in_addr<F>(va));
    const auto got = b.translate(ram, context, va);
    std::ostringstream s;
    s << std::hex << "va 0x" << va << ": ";
    if (!got) return s.str() + "refused: " + std::string(got.why().field);
    if (got->status != want.status) return s.str() + "status differs";
    if (got->accesses != want.accesses) return s.str() + "entries read differ";
    if (want.status != walk_status::mapped) return {};
    if (got->level != want.level || got->size_lg2 != want.size_lg2) return s.str() + "leaf level/size differ";
    if (got->oa != want.oa) {
        s << "oa 0x" << got->oa.value << ", driver 0x" << want.oa.value;
        return s.str();
    }
    if (got->perm != want.perm) {
        s << "perm 0x" << to_bits(got->perm) << ", driver 0x" << to_bits(want.perm);
        return s.str();
    }
    return {};
}

} // namespace iopgtable::test
