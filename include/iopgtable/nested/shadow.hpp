// SPDX-License-Identifier: MIT
#pragma once
/// @file shadow.hpp
/// The shadow table a folded_table writes: any single-stage table, seen through the few
/// operations folding needs (`shadow_store`). `page_table_shadow<F, M>` is a page table of
/// format F; `any_shadow` hides the format behind one type, for hosts (and tools) that choose
/// the shadow format at run time.
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "../core/address.hpp"
#include "../core/prot.hpp"
#include "../core/result.hpp"
#include "../engine/format.hpp"
#include "../engine/page_table.hpp"

namespace iopgtable::nested {

/// What the shadow says about one input address.
struct shadow_lookup {
    bool mapped = false;
    pa_t oa{};               ///< mapped: the output address
    prot perm = prot::none;  ///< mapped: the leaf's flags
    unsigned size_lg2 = 0;   ///< mapped: the leaf's size
};

/// Called for each shadow leaf entry (its leaf's first input address and size); false stops.
using shadow_leaf_fn = std::function<bool(std::uint64_t base, unsigned size_lg2)>;

/// A single-stage table folding can write. Addresses are plain numbers: the store converts
/// them to its format's input type.
/// - `geo()`: the table's geometry (input size, page sizes).
/// - `map(iova, pa, length, p)`: as page_table::map (largest pages, all or nothing).
/// - `unmap(iova, length)`: as page_table::unmap, exact.
/// - `clear()`: unmaps everything and frees the tables it can.
/// - `lookup(iova)`: the translation of one address.
/// - `leaves(first, last, fn)`: each leaf entry whose slot meets [first, last], in order.
/// - `readback(p)`: the flags a leaf written for `p` reads back as; prot::none when the format
///   refuses `p` (check_prot).
template <class T>
concept shadow_store = requires(T& t, const T& ct, std::uint64_t a, prot p, const shadow_leaf_fn& fn) {
    { ct.geo() } -> std::convertible_to<geometry>;
    { t.map(a, a, a, p) } -> std::same_as<result<void>>;
    { t.unmap(a, a) } -> std::same_as<result<length_t>>;
    { t.clear() };
    { ct.lookup(a) } -> std::same_as<shadow_lookup>;
    { ct.leaves(a, a, fn) } -> std::same_as<result<void>>;
    { ct.readback(p) } -> std::same_as<prot>;
};

/// A page table of format F in table memory M as a shadow store.
template <page_table_format F, table_memory M>
class page_table_shadow {
public:
    using format = F;
    using config = typename F::config;
    using memory = M;
    using table_type = page_table<F, M>;

    /// An empty table. Errors: page_table::create's.
    static result<page_table_shadow> create(const config& cfg, M& mem) {
        auto t = table_type::create(cfg, mem);
        if (!t) return failure(t.error());
        return page_table_shadow(std::move(*t));
    }

    const geometry& geo() const noexcept { return t_.geo(); }
    result<void> map(std::uint64_t iova, std::uint64_t pa, std::uint64_t length, prot p) {
        return t_.map(in(iova), pa_t{pa}, length_t{length}, p);
    }
    result<length_t> unmap(std::uint64_t iova, std::uint64_t length) { return t_.unmap(in(iova), length_t{length}); }
    void clear() {
        const geometry& g = t_.geo();
        const std::uint64_t span = g.ias >= 64 ? ~(t_.min_page() - 1) : lg2_to_size(g.ias);
        (void)t_.unmap(in(0), length_t{span});
        t_.reclaim();
    }
    shadow_lookup lookup(std::uint64_t iova) const noexcept {
        const leaf_translation w = t_.lookup_leaf(in(iova));
        if (!w.mapped()) return {};
        return {true, pa_t{w.oa}, w.perm, w.size_lg2};
    }
    result<void> leaves(std::uint64_t first, std::uint64_t last, const shadow_leaf_fn& fn) const {
        return t_.visit(in(first), in(last), [&](const leaf_entry<F>& e) {
            return fn(e.iova & ~low_mask(e.size_lg2), e.size_lg2);
        });
    }
    prot readback(prot p) const noexcept {
        if (!F::check_prot(t_.cfg(), p)) return prot::none;
        return F::leaf_prot(t_.cfg(), 0, F::make_leaf(t_.cfg(), 0, F::item_lg2(0), 0, p));
    }

    /// The page table itself (for dumps and statistics).
    const table_type& table() const noexcept { return t_; }

private:
    explicit page_table_shadow(table_type&& t) noexcept : t_(std::move(t)) {}
    static typename F::input_address in(std::uint64_t a) noexcept { return typename F::input_address{a}; }

    table_type t_;
};

/// A shadow store of a format chosen at run time: owns a page_table_shadow<F, M> and its table
/// memory behind one type.
class any_shadow {
public:
    /// A table of format F in memory `mem` (taken over). Errors: page_table::create's.
    template <page_table_format F, table_memory M>
    static result<any_shadow> create(const typename F::config& cfg, std::unique_ptr<M> mem) {
        auto t = page_table_shadow<F, M>::create(cfg, *mem);
        if (!t) return failure(t.error());
        return any_shadow(std::make_unique<holder<F, M>>(std::move(mem), std::move(*t)));
    }

    const geometry& geo() const noexcept { return p_->geo(); }
    result<void> map(std::uint64_t iova, std::uint64_t pa, std::uint64_t length, prot p) {
        return p_->map(iova, pa, length, p);
    }
    result<length_t> unmap(std::uint64_t iova, std::uint64_t length) { return p_->unmap(iova, length); }
    void clear() { p_->clear(); }
    shadow_lookup lookup(std::uint64_t iova) const { return p_->lookup(iova); }
    result<void> leaves(std::uint64_t first, std::uint64_t last, const shadow_leaf_fn& fn) const {
        return p_->leaves(first, last, fn);
    }
    prot readback(prot p) const { return p_->readback(p); }
    /// The format's name (F::name).
    const char* format_name() const noexcept { return p_->name(); }

private:
    struct base {
        virtual ~base() = default;
        virtual const geometry& geo() const noexcept = 0;
        virtual result<void> map(std::uint64_t, std::uint64_t, std::uint64_t, prot) = 0;
        virtual result<length_t> unmap(std::uint64_t, std::uint64_t) = 0;
        virtual void clear() = 0;
        virtual shadow_lookup lookup(std::uint64_t) const = 0;
        virtual result<void> leaves(std::uint64_t, std::uint64_t, const shadow_leaf_fn&) const = 0;
        virtual prot readback(prot) const = 0;
        virtual const char* name() const noexcept = 0;
    };
    template <class F, class M>
    struct holder final : base {
        holder(std::unique_ptr<M> m, page_table_shadow<F, M>&& t) : mem(std::move(m)), table(std::move(t)) {}
        const geometry& geo() const noexcept override { return table.geo(); }
        result<void> map(std::uint64_t i, std::uint64_t a, std::uint64_t l, prot p) override { return table.map(i, a, l, p); }
        result<length_t> unmap(std::uint64_t i, std::uint64_t l) override { return table.unmap(i, l); }
        void clear() override { table.clear(); }
        shadow_lookup lookup(std::uint64_t i) const override { return table.lookup(i); }
        result<void> leaves(std::uint64_t f, std::uint64_t l, const shadow_leaf_fn& fn) const override {
            return table.leaves(f, l, fn);
        }
        prot readback(prot p) const override { return table.readback(p); }
        const char* name() const noexcept override { return F::name; }
        std::unique_ptr<M> mem;             // declared first: destroyed after the table
        page_table_shadow<F, M> table;
    };
    explicit any_shadow(std::unique_ptr<base> p) noexcept : p_(std::move(p)) {}

    std::unique_ptr<base> p_;
};

static_assert(shadow_store<any_shadow>);

} // namespace iopgtable::nested
