// SPDX-License-Identifier: MIT
#pragma once
/// @file format.hpp
/// The contract between a page-table format and the generic engine.
///
/// A format is a struct of types, constexpr geometry and static descriptor functions; no
/// objects, no virtual dispatch. Everything the engine knows about hardware goes through it:
///
/// | member | meaning |
/// |---|---|
/// | `word` | the descriptor word (std::uint32_t or std::uint64_t) |
/// | `config` | run-time choices of one table (IAS, OAS, quirks, ...) |
/// | `input_address` | iova_t (stage 1 / single stage) or ipa_t (stage 2) |
/// | `name` | the family name `iopt --format` uses |
/// | `folder` | its folder under formats/ (README, vectors.txt) |
/// | `accepts(options)`, `config_from(options)` | picks this variant / builds its config from named options (iopt, vectors) |
/// | `registers(config, geometry, root)` | register values by name (`iopt regs`) |
/// | `sample_configs()` | configurations the conformance suite runs |
/// | `max_levels` | most levels any configuration uses |
/// | `item_lg2(level)` | bytes one entry maps at `level` (constexpr) |
/// | `index_lg2(level)` | log2 entries of a non-top table at `level` (constexpr) |
/// | `leaf_sizes(level)` | bitmap of leaf sizes the format can place at `level` (constexpr); a size larger than the item is written as identical replicated entries |
/// | `make_geometry(config)` | checks the config, gives levels, top-table size, IAS/OAS and page sizes |
/// | `classify(config, level, raw)` | empty / table / leaf (reserved encodings are `empty`: they translate nothing; 0 is `empty` at every level, which new tables and walks passing zero runs rely on) |
/// | `leaf_lg2(config, level, raw)` | size of the leaf `raw` belongs to |
/// | `table_address(config, level, raw)` | address of the next-lower table |
/// | `leaf_address(config, level, raw)` | output address of the leaf, aligned to its size |
/// | `make_table(config, level, pa)` | a table entry pointing at `pa` |
/// | `make_leaf(config, level, size_lg2, oa, prot)` | the leaf entry (each replicated copy is identical) |
/// | `leaf_prot(config, level, raw)` | prot flags back from a leaf; `make_leaf(leaf_prot(x))` reproduces x |
/// | `check_prot(config, prot)` | whether this table can express `prot` (errc::invalid if not) |
///
/// Optional, for dirty tracking (`has_dirty_tracking<F>`): `dirty_tracking(config)`,
/// `leaf_dirty(config, level, raw)`, `leaf_clean(config, level, raw)`, `leaf_set_dirty(...)`.
///
/// Optional, for walks that check accesses as hardware does (nested/):
///
/// | member | meaning | without it |
/// |---|---|---|
/// | `leaf_accessed(config, level, raw)` → bool (`has_access_flag<F>`) | the leaf's access flag; clear means an access-flag fault (Arm AF, v7s AP[0]) | no access-flag faults (VT-d: hardware sets A itself) |
/// | `leaf_memory_type(config, level, raw)` → memory_type (`has_memory_type<F>`) | the memory type the leaf gives, decoded from the hardware's attribute encoding | the format does not restrict the type (`write_back`) |
/// | `leaf_permissions` (a `permission_rule`) | which accesses a leaf's prot flags let through, per privilege | `iommu_prot` |
/// | `input_fault_level(geometry)` → unsigned | the level a translation fault for an input beyond the IAS reports | the top level |
#include <concepts>
#include <cstdint>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"

namespace iopgtable {

enum class entry_kind : std::uint8_t { empty, table, leaf };

/// Memory type of a leaf, most restrictive first: where two stages combine, the smaller value
/// wins (nested/README.md). Device memory is never cached; write-through and write-back are
/// Normal cacheable memory.
enum class memory_type : std::uint8_t { device, non_cacheable, write_through, write_back };

/// What a configuration makes of a format: the numbers the walker needs at run time.
struct geometry {
    unsigned levels = 0;          ///< levels used; the top level is `levels - 1`
    unsigned top_index_lg2 = 0;   ///< log2 of the entries in the top table
    unsigned ias = 0;             ///< input address bits
    unsigned oas = 0;             ///< output address bits
    std::uint64_t pgsize_bitmap = 0;  ///< leaf sizes this table uses (bit n: 2^n bytes)
    /// Derived from the fields above when the geometry is built (formats build it whole, in
    /// make_geometry, and nothing edits one afterwards), so that a walk does not shift by a
    /// run-time count to find them: the top table's index mask, and the address bits above ias
    /// and above oas (an address with any of them set is out of range).
    std::uint64_t top_mask = low_mask(top_index_lg2);
    std::uint64_t beyond_ias = ~low_mask(ias);
    std::uint64_t beyond_oas = ~low_mask(oas);

    /// Whether input address `a` lies within ias bits.
    constexpr bool in_ias(std::uint64_t a) const noexcept { return (a & beyond_ias) == 0; }
    /// Whether output address `a` lies within oas bits.
    constexpr bool in_oas(std::uint64_t a) const noexcept { return (a & beyond_oas) == 0; }
};

/// The most levels a format may have. Walk records of fixed size (the IOTLB's stage-1 table
/// IPAs, a nested walk's fetch trace) hold this many; `page_table_format`, which every format
/// header static_asserts, refuses a format with more.
inline constexpr unsigned max_table_levels = 6;

/// The rule that turns a leaf's prot flags (F::leaf_prot) into access rights. Each rule is the
/// architecture's for leaves written for those flags (formats/<folder>/README.md, prot mapping).
enum class permission_rule : std::uint8_t {
    /// Arm VMSAv8-64 stage 1, EL1&0 regime (Arm ARM D8.4.1 and the pseudocode
    /// AArch64.S1DirectBasePermissions; io-pgtable-arm writes AP[1] = !PRIV, AP[2] = !WRITE,
    /// UXN = PXN = NOEXEC): privileged read always, write with WRITE; unprivileged read and
    /// write only without PRIV; unprivileged instruction fetch governed by UXN alone
    /// (ux = !NOEXEC, whatever PRIV and the read bits say); privileged by PXN and by the rule
    /// that a location unprivileged software can write is never privileged-executable
    /// (px = !NOEXEC and not (WRITE and not PRIV)). SCTLR.WXN / CD.WXN is 0 (Linux).
    arm_stage1,
    /// Arm VMSAv8-64 stage 2 (AArch64.S2DirectBasePermissions): read S2AP[0], write S2AP[1] for
    /// either privilege; execute by XN[1:0] alone, independent of S2AP, decoded with FEAT_XNX
    /// (mandatory in SMMUv3.1 with stage 2, SMMU_IDR3.XNX): 0b00 both, 0b01 unprivileged
    /// only, 0b10 neither, 0b11 privileged only. io-pgtable-arm writes XN = 0b11 for NOEXEC,
    /// so a NOEXEC stage-2 leaf refuses unprivileged fetches and lets privileged ones through.
    arm_stage2,
    /// The IOMMU_* meaning without an architecture's finer rule: VT-d (3.6.1 first-stage and
    /// 3.7.1 second-stage access rights: a read needs R (first stage: present), a write W,
    /// an execute request R and not XD (x86 paging: every present page is readable; execute
    /// requests are deprecated, ECAP.ERS), a supervisor page (U/S = 0, our PRIV) refuses user
    /// requests), and Arm's short descriptor (v7s, B3.7.1: an instruction fetch needs read
    /// permission at the current privilege and no XN; PRIV = AP[1] clear).
    iommu_prot,
};

template <class F>
concept page_table_format = requires(const typename F::config& c, unsigned level, typename F::word w,
                                     std::uint64_t a, prot p) {
    typename F::word;
    typename F::config;
    typename F::input_address;
    { F::name } -> std::convertible_to<const char*>;
    { F::folder } -> std::convertible_to<const char*>;
    { F::max_levels } -> std::convertible_to<unsigned>;
    { F::item_lg2(level) } -> std::same_as<unsigned>;
    { F::index_lg2(level) } -> std::same_as<unsigned>;
    { F::leaf_sizes(level) } -> std::same_as<std::uint64_t>;
    { F::make_geometry(c) } -> std::same_as<result<geometry>>;
    { F::classify(c, level, w) } -> std::same_as<entry_kind>;
    { F::leaf_lg2(c, level, w) } -> std::same_as<unsigned>;
    { F::table_address(c, level, w) } -> std::same_as<std::uint64_t>;
    { F::leaf_address(c, level, w) } -> std::same_as<std::uint64_t>;
    { F::make_table(c, level, a) } -> std::same_as<typename F::word>;
    { F::make_leaf(c, level, level, a, p) } -> std::same_as<typename F::word>;
    { F::leaf_prot(c, level, w) } -> std::same_as<prot>;
    { F::check_prot(c, p) } -> std::same_as<result<void>>;
    requires F::max_levels >= 1 && F::max_levels <= max_table_levels;
};

template <class F>
concept has_dirty_tracking = page_table_format<F> &&
    requires(const typename F::config& c, unsigned level, typename F::word w) {
        { F::dirty_tracking(c) } -> std::same_as<bool>;
        { F::leaf_dirty(c, level, w) } -> std::same_as<bool>;
        { F::leaf_clean(c, level, w) } -> std::same_as<typename F::word>;
        { F::leaf_set_dirty(c, level, w) } -> std::same_as<typename F::word>;
    };

/// A format that reports a leaf's access flag (see the optional members above).
template <class F>
concept has_access_flag = page_table_format<F> &&
    requires(const typename F::config& c, unsigned level, typename F::word w) {
        { F::leaf_accessed(c, level, w) } -> std::same_as<bool>;
    };

/// A format that decodes a leaf's memory type (see the optional members above).
template <class F>
concept has_memory_type = page_table_format<F> &&
    requires(const typename F::config& c, unsigned level, typename F::word w) {
        { F::leaf_memory_type(c, level, w) } -> std::same_as<memory_type>;
    };

/// Bytes of a non-top table at `level`.
template <class F>
constexpr std::uint64_t level_table_bytes(unsigned level) noexcept {
    return sizeof(typename F::word) << F::index_lg2(level);
}

/// The largest size in `bitmap` that `va` and `pa` are both aligned to and that fits in
/// `length` bytes; 0 when none does. (Linux: iommu_pgsize / pt_compute_best_pgsize.)
constexpr unsigned best_page_lg2(std::uint64_t bitmap, std::uint64_t va, std::uint64_t pa,
                                 std::uint64_t length) noexcept {
    if (length == 0) return 0;
    std::uint64_t align = va | pa;
    // sizes <= alignment of va|pa
    if (align != 0) bitmap &= (align & (~align + 1)) | ((align & (~align + 1)) - 1);
    // sizes <= length
    unsigned top = 63 - static_cast<unsigned>(std::countl_zero(length));
    bitmap &= low_mask(top + 1);
    if (bitmap == 0) return 0;
    return 63 - static_cast<unsigned>(std::countl_zero(bitmap));
}

} // namespace iopgtable
