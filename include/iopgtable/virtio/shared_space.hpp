// SPDX-License-Identifier: MIT
#pragma once
/// @file shared_space.hpp
/// The address space of a page-table-sharing domain: the guest's own stage-1 table (attached
/// with ATTACH_TABLE, formats/README.md) translated over the VMM's stage 2, in one of two ways
/// the VMM picks per device:
///
/// - `nested`: every translation walks the guest's table with each table fetch translated by
///   stage 2, then stage 2 on the result (nested/translator.hpp), as an IOMMU with two stages
///   does. A stage-2 walk cache serves the table fetches.
/// - `folded`: a shadow single-stage table of the host's format D holds IOVA → host-physical,
///   built from both stages (nested/folding.hpp, mode (b)): the guest writes its table and the
///   shadow follows at each INVALIDATE (new mappings included: like VT-d caching mode). Re-reads
///   are bounded by a fetch budget; one that runs out leaves the rest unmapped (DMA there
///   faults) and the INVALIDATE answers NOMEM.
///
/// The two share this interface (run-time polymorphism: the format is the guest's choice, made
/// at ATTACH_TABLE). Translations are of context 0 (the table itself, or slot 0 of a context
/// table); other contexts are accepted and invalidated but not translated by the DMA path.
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "../engine/page_table.hpp"
#include "../mem/guest_ram.hpp"
#include "../mem/host_heap.hpp"
#include "../nested/folding.hpp"
#include "../nested/shadow.hpp"
#include "../nested/translator.hpp"
#include "../nested/walk_cache.hpp"
#include "../sharing/invalidate.hpp"
#include "guest_memory.hpp"
#include "wire.hpp"

namespace iopgtable::virtio {

enum class shared_mode : std::uint8_t { nested, folded };

/// One translation of a shared space: host-physical output of the address, the size of the
/// mapping it lies in, the combined flags; or why not.
struct space_walk {
    bool ok = false;
    std::uint64_t hpa = 0;
    unsigned size_lg2 = 0;
    prot perm = prot::none;
    unsigned accesses = 0;  ///< table entries read (both stages)
};

class shared_space {
public:
    virtual ~shared_space() = default;
    /// Translates `iova` of context 0 for a read (the device IOTLB checks the access against
    /// the permissions returned).
    virtual space_walk translate(std::uint64_t iova) = 0;
    /// Applies a decoded INVALIDATE. OK, or NOMEM when a folded re-read ran out of budget.
    virtual status invalidate(const sharing::invalidation& inv) = 0;
    /// The VMM changed its stage 2 over [gpa, gpa + size): forget what was derived from it.
    virtual void stage2_changed(std::uint64_t gpa, std::uint64_t size) = 0;
    virtual std::string_view format_name() const = 0;
    virtual shared_mode mode() const = 0;
};

namespace detail {

/// Everything both spaces need to find the guest's table.
template <class Binding, page_table_format S2>
struct space_base {
    Binding binding;
    const guest_view* guest;
    page_table<S2, guest_ram>* s2;
    /// The page directory of context 0 (read through the guest's RAM slot).
    checked<pa_t> root() const { return binding.root(*guest, 0); }
};

} // namespace detail

template <page_table_format S1, page_table_format S2, class Binding>
class nested_space final : public shared_space {
public:
    /// Checks that context 0's table can be found (the refusal otherwise).
    static checked<std::unique_ptr<shared_space>> create(Binding b, const typename S1::config& cfg,
                                                          const guest_view& guest, page_table<S2, guest_ram>& s2) {
        auto p = std::unique_ptr<nested_space>(new nested_space({std::move(b), &guest, &s2}, cfg));
        if (auto r = p->rebind(); r.code != status::ok) return r;
        return std::unique_ptr<shared_space>(std::move(p));
    }
    space_walk translate(std::uint64_t iova) override {
        if (!tr_) return {};
        // One walk, its leaf only: the device IOTLB checks each access against `perm`. A
        // translation that lets an unprivileged transaction neither read nor write (say,
        // execute-only) is no translation for DMA; a write-only one still translates.
        const nested::leaf_walk l = tr_->translate_leaf(iova_t{iova});
        constexpr nested::access_request rd{nested::access_kind::read, false}, wr{nested::access_kind::write, false};
        if (!l.mapped() || !(nested::permits(l.rights, rd) || nested::permits(l.rights, wr)))
            return space_walk{false, 0, 0, prot::none, l.accesses};
        return space_walk{true, l.output, l.size_lg2, l.perm, l.accesses};
    }
    status invalidate(const sharing::invalidation& inv) override {
        // The translator keeps no translations (the device IOTLB does); the walk cache holds
        // stage-2 translations, which the guest cannot change. A new context table re-reads
        // context 0's root.
        if (inv.kind == virtio::invalidate_kind::table) return rebind().code;
        return status::ok;
    }
    void stage2_changed(std::uint64_t gpa, std::uint64_t size) override {
        if (size != 0) walk_cache_.invalidate(gpa, size);
    }
    std::string_view format_name() const override { return S1::name; }
    shared_mode mode() const override { return shared_mode::nested; }

private:
    nested_space(detail::space_base<Binding, S2> base, const typename S1::config& cfg) : base_(std::move(base)), cfg_(cfg) {}
    refusal rebind() {
        tr_.reset();
        auto root = base_.root();
        if (!root) return root.why();
        auto t = nested::nested_translator<S1, S2, guest_ram>::create(
            cfg_, ipa_t{root->value}, nested::stage_table<S2, guest_ram>::of(*base_.s2), nested::nested_caches{&walk_cache_, nullptr, 0});
        if (!t) return {to_status(t.error()), "config"};
        tr_.emplace(std::move(*t));
        return {status::ok, {}};
    }

    detail::space_base<Binding, S2> base_;
    typename S1::config cfg_;
    nested::walk_cache walk_cache_{32};
    std::optional<nested::nested_translator<S1, S2, guest_ram>> tr_;
};

template <page_table_format S1, page_table_format S2, page_table_format D, class Binding>
class folded_space final : public shared_space {
public:
    using shadow_store = nested::page_table_shadow<D, host_heap>;
    using fold_type = nested::basic_folded_table<S1, S2, guest_ram, shadow_store>;

    /// Builds the shadow at once. Refusals: context 0's table not found (its refusal), a
    /// shadow that cannot hold the guest's table (UNSUPP), table memory or the fetch budget
    /// running out (NOMEM).
    static checked<std::unique_ptr<shared_space>> create(Binding b, const typename S1::config& cfg,
                                                          const guest_view& guest, page_table<S2, guest_ram>& s2,
                                                          const typename D::config& shadow_cfg,
                                                          std::uint64_t table_bytes, std::uint64_t fetch_budget) {
        auto p = std::unique_ptr<folded_space>(
            new folded_space({std::move(b), &guest, &s2}, cfg, shadow_cfg, table_bytes, fetch_budget));
        if (auto r = p->rebind(); r.code != status::ok) return r;
        return std::unique_ptr<shared_space>(std::move(p));
    }
    space_walk translate(std::uint64_t iova) override {
        if (!fold_) return {};
        const nested::shadow_lookup l = fold_->lookup(iova_t{iova});
        if (!l.mapped) return space_walk{false, 0, 0, prot::none, 0};
        return space_walk{true, l.oa.value, l.size_lg2, l.perm, 0};
    }
    status invalidate(const sharing::invalidation& inv) override {
        if (!fold_) return status::noent;
        failures_before_ = fold_->stats().map_failures;
        switch (inv.kind) {
        case virtio::invalidate_kind::vaddr:
            if (inv.context != 0) return status::ok;
            if (auto r = fold_->invalidate(iova_t{inv.first}, length_t{inv.last - inv.first + 1}); !r)
                return to_status(r.error());
            break;
        case virtio::invalidate_kind::single:
            if (inv.context != 0) return status::ok;
            fold_->invalidate_all();
            break;
        case virtio::invalidate_kind::table:
            if (auto r = rebind(); r.code != status::ok) return r.code;
            break;
        }
        return fold_->truncated() || shadow_full() ? status::nomem : status::ok;
    }
    void stage2_changed(std::uint64_t gpa, std::uint64_t size) override {
        if (fold_) fold_->invalidate_stage2(ipa_t{gpa}, length_t{size});
    }
    std::string_view format_name() const override { return S1::name; }
    shared_mode mode() const override { return shared_mode::folded; }
    const fold_type* fold() const noexcept { return fold_ ? &*fold_ : nullptr; }

private:
    folded_space(detail::space_base<Binding, S2> base, const typename S1::config& cfg, const typename D::config& shadow_cfg,
                 std::uint64_t table_bytes, std::uint64_t fetch_budget)
        : base_(std::move(base)), cfg_(cfg), shadow_cfg_(shadow_cfg), heap_(table_bytes), budget_(fetch_budget) {}
    bool shadow_full() const noexcept { return fold_ && fold_->stats().map_failures > failures_before_; }
    refusal rebind() {
        fold_.reset();
        auto root = base_.root();
        if (!root) return root.why();
        auto shadow = shadow_store::create(shadow_cfg_, heap_);
        if (!shadow) return {to_status(shadow.error()), "shadow"};
        // Created empty (sync deferred) so that the budget applies to the first re-read too.
        auto f = fold_type::create(cfg_, ipa_t{root->value}, *base_.s2, std::move(*shadow), nullptr, budget_);
        if (!f) return {f.error() == errc::invalid ? status::unsupp : to_status(f.error()), "shadow"};
        fold_.emplace(std::move(*f));
        if (fold_->truncated()) return {status::nomem, "fetch budget"};
        if (fold_->stats().map_failures != 0) return {status::nomem, "shadow table memory"};
        return {status::ok, {}};
    }

    detail::space_base<Binding, S2> base_;
    typename S1::config cfg_;
    typename D::config shadow_cfg_;
    host_heap heap_;
    std::uint64_t budget_;
    std::optional<fold_type> fold_;
    std::uint64_t failures_before_ = 0;
};

} // namespace iopgtable::virtio
