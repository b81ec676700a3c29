// SPDX-License-Identifier: MIT
#pragma once
/// @file types.hpp
/// What a nested (stage-1-over-stage-2) translation works with: the access being translated,
/// one stage's leaf, a finished translation, a fault as a value, and the rules that combine the
/// two stages. The model is described in nested/README.md.
#include <cstdint>
#include <string_view>
#include <utility>
#include <variant>

#include "../core/address.hpp"
#include "../core/bits.hpp"
#include "../core/prot.hpp"
#include "../engine/format.hpp"

namespace iopgtable::nested {

/// What a device does with an address. A stage-1 table fetch is always a read.
enum class access_kind : std::uint8_t { read, write, exec };

/// One access to translate: the transaction's attributes the permission checks use. `kind`
/// is data read, data write or instruction fetch (SMMUv3 InD, with RnW; VT-d: an execute
/// request); `privileged` the privilege (SMMUv3 PnU, after STE.PRIVCFG; VT-d PR). Which leaf lets
/// which access through is each format's rule (`permission_rule`, nested/README.md).
struct access_request {
    access_kind kind = access_kind::read;
    bool privileged = false;
};

/// What one leaf lets through, per privilege: the architecture's (pr, pw, px) and (ur, uw, ux)
/// (Arm ARM AArch64.S1DirectBasePermissions / S2DirectBasePermissions), or VT-d's supervisor
/// and user rights. Two stages combine by intersection (`&`): an access passes a nested
/// translation only when both stages let it through (Arm ARM D8.4, "combining the stage 1 and
/// stage 2 permissions"; VT-d 3.8).
struct access_rights {
    static constexpr std::uint8_t read = 1, write = 2, exec = 4;
    std::uint8_t privileged = 0;    ///< read | write | exec for privileged transactions
    std::uint8_t unprivileged = 0;  ///< the same for unprivileged ones
    friend constexpr access_rights operator&(access_rights a, access_rights b) noexcept {
        return {static_cast<std::uint8_t>(a.privileged & b.privileged),
                static_cast<std::uint8_t>(a.unprivileged & b.unprivileged)};
    }
    friend constexpr bool operator==(const access_rights&, const access_rights&) = default;
};

/// `permission_rule` (engine/format.hpp) is part of the format contract: each format names its own.
using iopgtable::permission_rule;

/// The nested configuration: what the IOMMU does that neither stage's tables say.
struct nested_settings {
    /// SMMUv3 STE.S2PTW (5.2, "protected table walk"; Arm HCR_EL2.PTW): a stage-1 table
    /// fetch from a page stage 2 maps as Device memory is a stage-2 permission fault. On by
    /// default: Linux's arm-smmu-v3 sets S2PTW in every STE with stage 2, nested ones
    /// included (arm_smmu_make_s2_domain_ste). Off, the fetch succeeds. Formats without memory
    /// types (VT-d second stage) never map tables as Device memory.
    bool protected_table_walk = true;
};

/// Why a translation faulted (Arm ARM D8.x fault types; VT-d 7.1 fault reasons map onto these).
enum class fault_reason : std::uint8_t {
    translation,   ///< no leaf: an empty entry, or an input address beyond the stage's input size
    permission,    ///< the leaf does not allow the access
    address_size,  ///< an output or table address at or above 2^oas of its stage
    access_flag,   ///< the leaf's access flag is clear (formats with `has_access_flag`)
    walk_abort,    ///< a table entry's address is not backed by memory (Arm: external abort on a walk)
};

constexpr std::string_view to_string(access_kind k) noexcept {
    switch (k) {
    case access_kind::read: return "read";
    case access_kind::write: return "write";
    case access_kind::exec: return "exec";
    }
    return "unknown";
}

constexpr std::string_view to_string(fault_reason r) noexcept {
    switch (r) {
    case fault_reason::translation: return "translation";
    case fault_reason::permission: return "permission";
    case fault_reason::address_size: return "address-size";
    case fault_reason::access_flag: return "access-flag";
    case fault_reason::walk_abort: return "walk-abort";
    }
    return "unknown";
}

constexpr std::string_view to_string(memory_type m) noexcept {
    switch (m) {
    case memory_type::device: return "device";
    case memory_type::non_cacheable: return "non-cacheable";
    case memory_type::write_through: return "write-through";
    case memory_type::write_back: return "write-back";
    }
    return "unknown";
}

/// A fault, as a value.
struct fault {
    unsigned stage = 1;          ///< 1 or 2
    /// Level (library numbering, 0 = leaf level) at `stage`. An input beyond the stage's input
    /// size reports the architecture's level 0 where it has one (`input_fault_level`).
    unsigned level = 0;
    std::uint64_t address = 0;   ///< input address at `stage`: the IOVA (1) or the IPA (2)
    /// The fault happened while fetching a stage-1 table entry. Stage 2 could not translate
    /// the entry's IPA: `address` is that IPA and `level` the stage-2 level (Arm: S1PTW, the
    /// IPA of the descriptor). Or a stage-1 fault on the fetch: the entry's IPA is beyond stage
    /// 1's output size (address_size), or it translates but no memory backs the output
    /// (walk_abort, SMMUv3 F_WALK_EABT with S2 = 0): `address` is the IOVA and `level` the
    /// stage-1 level being fetched.
    bool table_fetch = false;
    unsigned table_level = 0;    ///< table_fetch: the stage-1 level whose entry was being fetched
    access_kind access = access_kind::read;  ///< the access being translated
    fault_reason reason = fault_reason::translation;
    unsigned accesses = 0;       ///< table entries read before the fault (both stages)
    friend constexpr bool operator==(const fault&, const fault&) = default;
};

/// One stage's leaf, as a translation used it.
struct stage_leaf {
    unsigned level = 0;
    unsigned size_lg2 = 0;          ///< the leaf's size
    /// Bytes the entry itself maps (its level's item size): smaller than size_lg2 for a leaf
    /// written as replicated entries (v7s large pages and supersections). A walk only ever
    /// reads the entry of its own slot, so a guest's copies need not agree.
    unsigned entry_lg2 = 0;
    std::uint64_t input_base = 0;   ///< input address of the leaf's first byte
    std::uint64_t output_base = 0;  ///< output address of the leaf's first byte
    prot perm = prot::none;          ///< the leaf's flags (F::leaf_prot)
    access_rights rights{};          ///< what the leaf lets through (its format's `permission_rule`)
    memory_type memory = memory_type::write_back;
    friend constexpr bool operator==(const stage_leaf&, const stage_leaf&) = default;
};

/// A successful nested translation of one IOVA.
struct translation {
    iova_t iova{};                 ///< the address translated
    ipa_t ipa{};                   ///< what stage 1 made of it
    pa_t output{};                 ///< what stage 2 made of that: the host-physical address
    unsigned size_lg2 = 0;         ///< the mapping's size: the smaller of the two leaves
    stage_leaf s1, s2;
    prot perm = prot::none;        ///< combined (`combine_prot`)
    access_rights rights{};        ///< combined: s1.rights & s2.rights, exactly what passes
    memory_type memory = memory_type::write_back;  ///< combined (`combine_memory`)
    unsigned accesses = 0;         ///< table entries read (0 for a translation-cache hit)
    bool cached = false;           ///< served by the translation cache

    /// First IOVA of the mapping (size 2^size_lg2) this translation belongs to.
    constexpr std::uint64_t iova_base() const noexcept { return iova.value & ~low_mask(size_lg2); }
};

/// What `nested_translator::translate_leaf` answers: a successful walk's output address and
/// what a DMA path checks it with, 16 bytes (returned in registers); or, `mapped()` false, no
/// translation (a fault of either stage other than permission), `output` all ones.
struct leaf_walk {
    std::uint64_t output = ~std::uint64_t{0};  ///< host-physical address of the IOVA
    prot perm = prot::none;                    ///< both stages' flags combined (`combine_prot`)
    access_rights rights{};                    ///< both stages' rights combined (`&`): what passes
    std::uint8_t size_lg2 = 0;                 ///< the smaller of the two leaves
    std::uint8_t accesses = 0;                 ///< table entries read (both stages, at most 6 × 7 + 6)
    constexpr bool mapped() const noexcept { return output != ~std::uint64_t{0}; }
};
static_assert(sizeof(leaf_walk) == 16);
static_assert(max_table_levels * (max_table_levels + 1) + max_table_levels <= 0xff, "leaf_walk::accesses fits a byte");

/// A translation or a fault.
class translate_result {
public:
    constexpr translate_result(translation t) noexcept : v_(std::move(t)) {}
    constexpr translate_result(fault f) noexcept : v_(f) {}
    constexpr bool ok() const noexcept { return v_.index() == 0; }
    constexpr explicit operator bool() const noexcept { return ok(); }
    /// Precondition: ok().
    constexpr const translation& value() const noexcept { return *std::get_if<0>(&v_); }
    constexpr const translation* operator->() const noexcept { return std::get_if<0>(&v_); }
    /// Precondition: !ok().
    constexpr const fault& error() const noexcept { return *std::get_if<1>(&v_); }
    /// Table entries read, whichever way it ended.
    constexpr unsigned accesses() const noexcept { return ok() ? value().accesses : error().accesses; }

private:
    std::variant<translation, fault> v_;
};

// ---------------------------------------------------------------------------- combination rules

/// The more restrictive of two memory types: Device beats Normal, non-cacheable beats
/// cacheable, write-through beats write-back (Arm ARM D8.5.5 combining stage 1 and stage 2).
constexpr memory_type combine_memory(memory_type a, memory_type b) noexcept { return a < b ? a : b; }

/// The memory type prot flags ask for: MMIO device, CACHE write-back, else non-cacheable.
constexpr memory_type memory_of(prot p) noexcept {
    return has(p, prot::mmio) ? memory_type::device : has(p, prot::cache) ? memory_type::write_back : memory_type::non_cacheable;
}

/// The prot flags that express a memory type: device MMIO, cacheable CACHE.
constexpr prot prot_of(memory_type m) noexcept {
    return m == memory_type::device ? prot::mmio : m == memory_type::non_cacheable ? prot::none : prot::cache;
}

/// Whether rights `r` let access `a` through.
constexpr bool permits(access_rights r, access_request a) noexcept {
    const std::uint8_t have = a.privileged ? r.privileged : r.unprivileged;
    switch (a.kind) {
    case access_kind::read: return (have & access_rights::read) != 0;
    case access_kind::write: return (have & access_rights::write) != 0;
    case access_kind::exec: return (have & access_rights::exec) != 0;
    }
    return false;
}

/// The rights a leaf with flags `p` gives under `rule` (see permission_rule).
constexpr access_rights rights_of(prot p, permission_rule rule) noexcept {
    using R = access_rights;
    const bool r = has(p, prot::read), w = has(p, prot::write), x = !has(p, prot::noexec), priv = has(p, prot::priv);
    auto bits = [](bool rd, bool wr, bool ex) {
        return static_cast<std::uint8_t>((rd ? R::read : 0) | (wr ? R::write : 0) | (ex ? R::exec : 0));
    };
    switch (rule) {
    case permission_rule::arm_stage1: {
        const bool uw = w && !priv;
        return {bits(r, w, x && !uw), bits(r && !priv, uw, x)};
    }
    case permission_rule::arm_stage2:
        // NOEXEC is XN = 0b11 (what make_leaf writes): privileged execute, unprivileged not.
        return {bits(r, w, true), bits(r, w, x)};
    case permission_rule::iommu_prot:
        return {bits(r, w, r && x), priv ? std::uint8_t{0} : bits(r, w, r && x)};
    }
    return {};
}

/// Whether IOMMU_* flags `perm` let `a` through: the nested rule for flags, `arm_stage1`
/// (the prot values are Linux's, and io-pgtable-arm's stage-1 encoding defines what they
/// mean). A read needs READ, a write WRITE, both without PRIV unless privileged; an
/// unprivileged instruction fetch needs only no NOEXEC; a privileged one also that the
/// leaf is not writable by unprivileged accesses.
constexpr bool permits(prot perm, access_request a) noexcept {
    return permits(rights_of(perm, permission_rule::arm_stage1), a);
}

/// Both stages' flags as one: READ and WRITE only where both stages have them, NOEXEC and
/// PRIV where either has them, CACHE/MMIO from the combined memory type `m`. For data
/// accesses, and for unprivileged instruction fetches through two Arm stages,
/// `permits(combine_prot(...), a)` is exactly what both stages let through; privileged
/// fetches are what flags can say (the exact answer is `translation::rights`). One rule
/// everywhere: the nested translator, folding and the virtio device's MAP domains use it.
constexpr prot combine_prot(prot s1, prot s2, memory_type m) noexcept {
    const prot rw = prot::read | prot::write;
    const prot restrict = prot::noexec | prot::priv;
    return (s1 & s2 & rw) | ((s1 | s2) & restrict) | prot_of(m);
}

} // namespace iopgtable::nested
