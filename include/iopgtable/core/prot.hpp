// SPDX-License-Identifier: MIT
#pragma once
/// @file prot.hpp
/// Access and attribute flags with the values and meaning of Linux's IOMMU_* flags
/// (include/linux/iommu.h): a mapping needs READ or WRITE; the others are attributes.
#include <cstdint>
#include <string>

namespace iopgtable {

enum class prot : std::uint32_t {
    none = 0,
    read = 0x1,     ///< IOMMU_READ: device may read
    write = 0x2,    ///< IOMMU_WRITE: device may write
    cache = 0x4,    ///< IOMMU_CACHE: coherent, cacheable memory
    noexec = 0x8,   ///< IOMMU_NOEXEC: no instruction fetch
    mmio = 0x10,    ///< IOMMU_MMIO: device memory
    priv = 0x20,    ///< IOMMU_PRIV: privileged accesses only
};
inline constexpr std::uint32_t prot_all_bits = 0x3f;

constexpr prot operator|(prot a, prot b) noexcept { return prot(std::uint32_t(a) | std::uint32_t(b)); }
constexpr prot operator&(prot a, prot b) noexcept { return prot(std::uint32_t(a) & std::uint32_t(b)); }
constexpr prot operator~(prot a) noexcept { return prot(~std::uint32_t(a) & prot_all_bits); }
constexpr prot& operator|=(prot& a, prot b) noexcept { return a = a | b; }
constexpr prot& operator&=(prot& a, prot b) noexcept { return a = a & b; }
/// True when every flag of `b` is in `a`.
constexpr bool has(prot a, prot b) noexcept { return (std::uint32_t(a) & std::uint32_t(b)) == std::uint32_t(b); }
constexpr std::uint32_t to_bits(prot p) noexcept { return std::uint32_t(p); }
/// Flags from a raw value; bits outside the known set are kept so that callers can refuse them.
constexpr prot prot_from_bits(std::uint32_t v) noexcept { return prot(v); }
/// A prot a map accepts: only known bits, and READ or WRITE.
constexpr bool prot_valid(prot p) noexcept {
    auto v = std::uint32_t(p);
    return (v & ~prot_all_bits) == 0 && (v & 0x3) != 0;
}

} // namespace iopgtable
