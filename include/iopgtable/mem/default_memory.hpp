// SPDX-License-Identifier: MIT
#pragma once
/// @file default_memory.hpp
/// Table memory that suits a format for software use: the host heap when the format's table
/// descriptors can hold any host pointer (LPAE, VT-d), otherwise an arena of bounded RAM low in
/// the address space (ARM v7s tables must lie below 4 GiB).
#include <cstdint>
#include <memory>
#include <type_traits>

#include "guest_ram.hpp"
#include "host_heap.hpp"

namespace iopgtable {

/// True when F's table entries can point at a typical user-space host address.
template <class F>
inline constexpr bool holds_host_pointers = [] {
    constexpr std::uint64_t probe = 0x7fffff000000ull;  // high user-space address, aligned for every granule
    typename F::config c{};
    return F::table_address(c, 1, F::make_table(c, 1, probe)) == probe;
}();

template <class F>
using default_memory_t = std::conditional_t<holds_host_pointers<F>, host_heap, guest_ram>;

/// Base of the arena used for formats that need low table addresses.
inline constexpr std::uint64_t low_arena_base = 0x10000000;

/// A fresh table memory for F: a host_heap, or a `arena_bytes` guest_ram at low_arena_base
/// (pages are only touched when used).
template <class F>
std::unique_ptr<default_memory_t<F>> make_default_memory(std::uint64_t arena_bytes = std::uint64_t{1} << 28) {
    if constexpr (holds_host_pointers<F>) return std::make_unique<host_heap>();
    else return std::make_unique<guest_ram>(arena_bytes, pa_t{low_arena_base});
}

} // namespace iopgtable
