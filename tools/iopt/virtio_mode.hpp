// SPDX-License-Identifier: MIT
#pragma once
/// @file virtio_mode.hpp
/// `iopt virtio [options] < script`: a simulated VM (include/iopgtable/sim/machine.hpp) whose
/// guest sends the script's virtio-iommu requests through the requestq, writes its own stage-1
/// tables for page-table sharing, and whose devices do DMA through `translate`. virtio.md
/// describes the options, the operations and the output.
///
/// The helpers below print what both `iopt virtio` and `iopt demo` print the same way.
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "script.hpp"

namespace iopgtable::virtio {
struct request_stats;
struct fault;
} // namespace iopgtable::virtio

namespace iopt {

/// The operations of `iopt virtio`, in help order.
inline constexpr std::array<operation, 30> virtio_operations{{
    {"attach", "DOMAIN EP [bypass]", 1u << 2 | 1u << 3, "STATUS used N"},
    {"detach", "DOMAIN EP", 1u << 2, "STATUS used N"},
    {"map", "DOMAIN VSTART VEND PSTART FLAGS", 1u << 5, "STATUS used N"},
    {"unmap", "DOMAIN VSTART VEND", 1u << 3, "STATUS used N"},
    {"probe", "EP [PROPS_LEN]", 1u << 1 | 1u << 2, "STATUS used N, then resv_mem ... lines"},
    {"probe_table", "AS [SLOTS]", 1u << 1 | 1u << 2, "STATUS used N, then len ... and format ... lines"},
    {"attach_table", "AS TABLE MODEL CONFIGHEX [FLAGS [NR_CONTEXTS]]", 1u << 4 | 1u << 5 | 1u << 6, "STATUS used N"},
    {"invalidate", "AS CONTEXT vaddr ADDR SIZE | AS CONTEXT single | AS CONTEXT table", 1u << 3 | 1u << 5,
     "STATUS used N"},
    {"raw", "READABLE_HEX WRITABLE_LEN", 1u << 2, "STATUS used N [reply HEX]"},
    {"shape", "PIECES [indirect]", 1u << 1 | 1u << 2, "ok"},
    {"translate", "EP IOVA r|w|x [SIZE]", 1u << 3 | 1u << 4,
     "PA pa [len L]... | fault reason R endpoint E flags F address A | pending ID"},
    {"config", "", 1u << 0, "config ... / features ..."},
    {"set_bypass", "VALUE", 1u << 1, "ok | refused"},
    {"gmap", "AS IOVA GPA SIZE PROT", 1u << 5, "ok | error name"},
    {"gunmap", "AS IOVA SIZE", 1u << 3, "bytes unmapped | error name"},
    {"gtable", "AS", 1u << 1, "table GPA model N config HEX | error name"},
    {"gattach", "AS [FLAGS]", 1u << 1 | 1u << 2, "STATUS used N"},
    {"gwrite", "GPA VALUE", 1u << 2, "ok | fault"},
    {"stats", "", 1u << 0, "request TYPE STATUS COUNT ..., translations, faults, iotlb ... END"},
    // The fast protocol (virtio.md, "Fast protocol").
    {"map_sg", "DOMAIN VSTART SIZE FLAGS PHYS [PHYS...]", ~((1u << 5) - 1), "STATUS used N"},
    {"group", "", 1u << 0, "(nothing; the requests up to end are one grouped chain)"},
    {"end", "", 1u << 0, "STATUS used N"},
    {"unmap_deferred", "DOMAIN VSTART VEND", 1u << 3, "sent ... lines, pending N"},
    {"advance", "MICROSECONDS", 1u << 1, "sent ... lines, pending N"},
    {"flush", "", 1u << 0, "sent ... lines, pending N"},
    // The vhost IOTLB service (virtio.md, "vhost IOTLB service").
    {"vhost_miss", "EP IOVA r|w|rw", 1u << 3, "update iova I size S uaddr U perm P | access_fail + fault ... | error"},
    {"vhost_log", "", 1u << 0, "invalidate iova I size S uaddr U perm P endpoint E ... | none"},
    // Page requests (virtio.md, "Page requests").
    {"page_requests", "", 1u << 0, "page_request ID endpoint E context C address A flags F ... | none"},
    {"reply", "ID ok|fail [PA]", 1u << 2 | 1u << 3, "STATUS used N"},
    {"resume", "", 1u << 0, "completed ID, then PA pa [len L]... | fault ...; per access | none"},
}};

/// Runs `iopt virtio` with the words after `virtio`; reads the script from stdin. Returns the
/// exit status: 0, 1 (malformed script line), 2 (bad command line).
int virtio_mode(std::span<char* const> args);

/// The simulated hosts `--host NAME` takes (sim/hosts.hpp all_hosts), `arm, intel, amd`.
std::string host_list();

/// `OK used 4`: the status in the tail that ends the first `used` bytes of the device-writable
/// part `writable` (its name, `status 0xNN` for a value the spec does not define), or `NONE used
/// 0` when the device used fewer than 4 bytes (it did not answer). `used` in decimal.
std::string reply_line(std::uint32_t used, std::span<const std::uint8_t> writable);

/// `ATTACH`, `DETACH`, `MAP`, `UNMAP`, `PROBE`, `PROBE_TABLE`, `ATTACH_TABLE`, `INVALIDATE`, or
/// `0xNN` for another type byte.
std::string request_name(std::uint8_t type);

/// `request TYPE STATUS COUNT` per non-zero counter of `s` (types in numeric order, statuses
/// in numeric order, `NONE` last: requests answered with used length 0).
std::vector<std::string> request_lines(const iopgtable::virtio::request_stats& s);

/// `fault reason R endpoint E flags F address A` for a fault event as the guest read it from
/// the eventq (`flags`: the letters r, w, x of the access; `address` only with its flag).
std::string fault_line(const iopgtable::virtio::fault& event);

} // namespace iopt
