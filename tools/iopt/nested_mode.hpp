// SPDX-License-Identifier: MIT
#pragma once
/// @file nested_mode.hpp
/// `iopt nested --s1 "<format options>" --s2 "<format options>" [--fold "<format options>"]
/// [--mediated] [--s2ptw 0|1] < script`: a guest's stage-1 table over a host's stage-2 table, walked nested
/// (include/iopgtable/nested/), and optionally folded into a shadow table. nested.md describes
/// the operations, the memory layout and the output.
#include <array>
#include <cstdint>
#include <span>

#include "script.hpp"

namespace iopt {

/// Host memory (guest_ram standing for host-physical memory): the stage-2 tables, then the
/// host pages behind the guest's stage-1 table window.
inline constexpr std::uint64_t nested_host_base = 0x80000000;
inline constexpr std::uint64_t nested_stage2_pool = 0x1000000;
inline constexpr std::uint64_t nested_window_hpa = nested_host_base + nested_stage2_pool;
/// The guest allocates its stage-1 tables from the top `nested_window_size` bytes of the IPA
/// space both stages reach: [2^k - size, 2^k), k = min(stage-1 OAS, stage-2 IAS).
inline constexpr std::uint64_t nested_window_size = 0x1000000;

/// The operations of `iopt nested`, in help order.
inline constexpr std::array<operation, 8> nested_operations{{
    {"s1map", "IOVA IPA SIZE PROT", 1u << 4, "ok | error name"},
    {"s1unmap", "IOVA SIZE", 1u << 2, "bytes unmapped | error name"},
    {"s2map", "IPA PA SIZE PROT", 1u << 4, "ok | error name"},
    {"s2unmap", "IPA SIZE", 1u << 2, "bytes unmapped | error name"},
    {"invalidate", "IOVA SIZE | all", 1u << 1 | 1u << 2, "ok | error name"},
    {"translate", "IOVA r|w|x [priv]", 1u << 2 | 1u << 3, "PA pa size size | fault stage S level L addr A REASON [table-fetch]"},
    {"shadow", "IOVA", 1u << 1, "PA pa | none"},
    {"stats", "", 1u << 0, "walks, accesses, cache hits and misses ... END"},
}};

/// Runs `iopt nested` with the words after `nested`; reads the script from stdin. Returns the
/// exit status: 0, 1 (malformed script line), 2 (bad command line).
int nested_mode(std::span<char* const> args);

} // namespace iopt
