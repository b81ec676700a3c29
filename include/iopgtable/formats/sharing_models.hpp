// SPDX-License-Identifier: MIT
#pragma once
/// @file sharing_models.hpp
/// The one registry of page-table sharing models and variants (formats/README.md, "Page-table
/// sharing registry"): the numbers a PROBE_TABLE entry and an ATTACH_TABLE request carry in
/// `model` and in the first le32 of their 64-byte blob, and how the model's PROBE_TABLE `sizes`
/// and `tag_bits` fields read. Formats name their (model, variant) from here; everything else
/// (negotiation, `iopt`) looks numbers up here instead of switching on them.
#include <cstdint>
#include <string_view>

namespace iopgtable::sharing {

/// Model numbers (0 is an unused PROBE_TABLE slot, invalid in ATTACH_TABLE).
inline constexpr std::uint32_t model_arm = 1, model_x86 = 2, model_riscv = 3;
/// ARM variants: LPAE 64-bit descriptors, LPAE 32-bit (reserved: no format implements it),
/// short-descriptor (v7s).
inline constexpr std::uint32_t arm_lpae64 = 1, arm_lpae32 = 2, arm_short = 3;
/// X86 variants: VT-d first stage, VT-d second stage and AMD-Vi v1 (host tables, never offered).
inline constexpr std::uint32_t x86_vtd_first_stage = 1, x86_vtd_second_stage = 2, x86_amd_v1 = 3;
/// RISC-V variants: the IOMMU's first stage (Sv39/48/57) and G-stage (Sv39x4/48x4/57x4; host
/// tables, never offered).
inline constexpr std::uint32_t riscv_first_stage = 1, riscv_g_stage = 2;

/// How a model's PROBE_TABLE `sizes` field reads: bit n set means a 2^n-byte granule, or an
/// n-level table.
enum class size_meaning : std::uint8_t { granule_bytes, table_levels };

struct model_info {
    std::uint32_t id;
    std::string_view name;       ///< as `iopt` prints it
    size_meaning sizes;
    std::string_view sizes_name; ///< the `sizes` field's name in `iopt` output
    std::string_view tag_name;   ///< the `tag_bits` field's name in `iopt` output (ASID / domain id)
};

struct variant_info {
    std::uint32_t model, id;
    std::string_view name;
};

inline constexpr model_info models[] = {
    {model_arm, "arm", size_meaning::granule_bytes, "granules", "asid_bits"},
    {model_x86, "x86", size_meaning::table_levels, "levels", "domain_bits"},
    {model_riscv, "riscv", size_meaning::table_levels, "levels", "pscid_bits"},
};

inline constexpr variant_info variants[] = {
    {model_arm, arm_lpae64, "lpae-64"},
    {model_arm, arm_lpae32, "lpae-32"},
    {model_arm, arm_short, "short-descriptor"},
    {model_x86, x86_vtd_first_stage, "vtd-first-stage"},
    {model_x86, x86_vtd_second_stage, "vtd-second-stage"},
    {model_x86, x86_amd_v1, "amd-v1"},
    {model_riscv, riscv_first_stage, "first-stage"},
    {model_riscv, riscv_g_stage, "g-stage"},
};

/// The registered model `id`, or nullptr.
constexpr const model_info* find_model(std::uint32_t id) noexcept {
    for (const auto& m : models)
        if (m.id == id) return &m;
    return nullptr;
}

/// The registered variant `id` of `model`, or nullptr.
constexpr const variant_info* find_variant(std::uint32_t model, std::uint32_t id) noexcept {
    for (const auto& v : variants)
        if (v.model == model && v.id == id) return &v;
    return nullptr;
}

/// Numbers collide with nothing: model ids unique and non-zero, (model, variant) pairs unique
/// and non-zero, every variant's model registered.
static_assert([] {
    for (std::size_t i = 0; i < std::size(models); ++i) {
        if (models[i].id == 0) return false;
        for (std::size_t j = i + 1; j < std::size(models); ++j)
            if (models[i].id == models[j].id) return false;
    }
    for (std::size_t i = 0; i < std::size(variants); ++i) {
        if (variants[i].id == 0 || !find_model(variants[i].model)) return false;
        for (std::size_t j = i + 1; j < std::size(variants); ++j)
            if (variants[i].model == variants[j].model && variants[i].id == variants[j].id) return false;
    }
    return true;
}());

} // namespace iopgtable::sharing
