// SPDX-License-Identifier: MIT
#pragma once
/// @file hosts.hpp
/// The simulated hosts: which formats the physical IOMMU of a simulated machine walks
/// (sim/machine.hpp). A host is the `device<Host>` parameter (virtio/device.hpp `device_host`):
/// its MAP/UNMAP domain format, the VMM's stage-2 format, and the formats guests may attach
/// (page-table sharing). `all_hosts` is the one list `iopt virtio --host NAME`, `iopt demo
/// --host NAME`, the benchmarks and the tests iterate; adding a host is one struct and one
/// entry there. This file and the format headers are the only ones that name concrete formats.
#include <string>
#include <string_view>

#include <boost/hana/all_of.hpp>
#include <boost/hana/bool.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>

#include "../formats/all.hpp"
#include "../sharing/negotiation.hpp"
#include "../virtio/device.hpp"

namespace iopgtable::virtio {

/// An Arm host: SMMU-style LPAE. MAP/UNMAP domains and folded shadows are LPAE stage-1 4K
/// tables, the VMM's stage 2 is LPAE stage-2 4K, and guests may attach LPAE stage-1 tables of
/// any granule or short-descriptor (v7s) tables.
struct arm_host {
    static constexpr const char* name = "arm";
    using domain_format = arm_lpae_s1_4k;
    using stage2_format = arm_lpae_s2_4k;
    static auto table_formats() {
        return boost::hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{}, sharing::device_format<arm_lpae_s1_16k>{},
                                       sharing::device_format<arm_lpae_s1_64k>{}, sharing::device_format<arm_v7s>{});
    }
};

/// An Intel host: VT-d. MAP/UNMAP domains and folded shadows are first-stage tables (they hold
/// IOVA → GPA, nested over the VMM's second stage), the VMM's stage 2 is VT-d second-stage,
/// guests attach VT-d first-stage tables.
struct intel_host {
    static constexpr const char* name = "intel";
    using domain_format = vtd_fl;
    using stage2_format = vtd_sl;
    static auto table_formats() { return boost::hana::make_tuple(sharing::device_format<vtd_fl>{}); }
};

/// An AMD host: AMD-Vi with nested translation (AMD IOMMU spec #48882, 2.2.6 "Nested
/// address translation"). The VMM's stage 2 is the AMD-Vi v1 host table; the guest's tables,
/// domains and folded shadows are x86-64 four- or five-level tables (AMD's v2 table, the
/// x86-64 long-mode layout), here the VT-d first-stage format, which has that layout, so guests
/// attach them as X86 variant VT-d first stage.
struct amd_host {
    static constexpr const char* name = "amd";
    using domain_format = vtd_fl;
    using stage2_format = amd_v1;
    static auto table_formats() { return boost::hana::make_tuple(sharing::device_format<vtd_fl>{}); }
};

/// A RISC-V host: the RISC-V IOMMU. The VMM's stage 2 is a G-stage table (Sv48x4), MAP/UNMAP
/// domains and folded shadows are first-stage tables (Sv48), and guests attach first-stage
/// tables (Sv39/Sv48/Sv57).
struct riscv_host {
    static constexpr const char* name = "riscv";
    using domain_format = riscv_s1;
    using stage2_format = riscv_s2;
    static auto table_formats() { return boost::hana::make_tuple(sharing::device_format<riscv_s1>{}); }
};

/// Every simulated host, the default (`arm`) first.
inline constexpr auto all_hosts = boost::hana::tuple_t<arm_host, intel_host, amd_host, riscv_host>;

/// Calls `fn(boost::hana::type_c<Host>)` for the simulated host called `name`; false (and no
/// call) when no host has that name.
template <class Fn>
bool with_host(std::string_view name, Fn&& fn) {
    bool found = false;
    boost::hana::for_each(all_hosts, [&](auto h) {
        if (!found && name == decltype(h)::type::name) {
            found = true;
            fn(h);
        }
    });
    return found;
}

/// The hosts' names in list order, `arm, intel, amd`, for messages.
inline std::string host_names() {
    std::string s;
    boost::hana::for_each(all_hosts, [&](auto h) {
        if (!s.empty()) s += ", ";
        s += decltype(h)::type::name;
    });
    return s;
}

static_assert(boost::hana::all_of(all_hosts, [](auto h) { return boost::hana::bool_c<device_host<typename decltype(h)::type>>; }),
              "every simulated host names its formats as device<Host> needs (virtio/device.hpp device_host)");

} // namespace iopgtable::virtio
