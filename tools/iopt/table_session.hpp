// SPDX-License-Identifier: MIT
#pragma once
/// @file table_session.hpp
/// The table-mode operations (script.hpp `table_operations`) on one page table of format F.
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <iopgtable/core/bits.hpp>
#include <iopgtable/engine/page_table.hpp>
#include <iopgtable/mem/guest_ram.hpp>

#include "hex.hpp"
#include "script.hpp"

namespace iopt {

/// Runs script operations on a table and prints their results (README.md, "Operations").
/// A `line_handler`: returns a reason only for a malformed line, before changing anything.
template <iopgtable::page_table_format F>
class table_session {
public:
    using table = iopgtable::page_table<F, iopgtable::guest_ram>;
    using input = typename F::input_address;

    explicit table_session(table& t) noexcept : table_(t) {}

    /// Runs `op` (one of `table_operations`, its argument count already checked) and prints its
    /// result. Returns the reason when an argument is malformed, before changing anything.
    std::optional<std::string> operator()(const operation& op, std::span<const std::string_view> args) {
        auto mode = iopgtable::unmap_mode::exact;
        if (op.name == "unmap" && args.size() == 3) {
            if (args[2] != "split") return "unmap mode must be 'split', got '" + std::string(args[2]) + "'";
            mode = iopgtable::unmap_mode::split;
            args = args.first(2);
        }
        std::array<std::uint64_t, 5> n{};
        for (std::size_t i = 0; i < args.size(); ++i) {
            auto v = parse_hex(args[i]);
            if (!v) return hex_error(args[i]);
            n[i] = *v;
        }
        const std::string_view name = op.name;
        if (name == "map") map(n[0], n[1], n[2], n[3]);
        else if (name == "map_pages") map_pages(n[0], n[1], n[2], n[3], n[4]);
        else if (name == "unmap") unmap(n[0], n[1], mode);
        else if (name == "iova") iova(n[0]);
        else if (name == "walk") walk(n[0]);
        else if (name == "dump") dump(args.empty() ? std::nullopt : std::optional(std::array{n[0], n[1]}));
        else if (name == "regs") regs();
        else if (name == "stats") stats();
        else if (name == "reclaim") emit(to_hex(table_.reclaim()));
        else return "operation '" + std::string(name) + "' is not available here";
        return std::nullopt;
    }

private:
    /// Prot bits beyond 32 bits are as unknown to the library as bits 6..31: `invalid`.
    static std::optional<iopgtable::prot> prot_of(std::uint64_t bits) {
        if (bits > 0xffffffffu) return std::nullopt;
        return iopgtable::prot_from_bits(static_cast<std::uint32_t>(bits));
    }

    void map(std::uint64_t iova, std::uint64_t pa, std::uint64_t size, std::uint64_t prot_bits) {
        auto p = prot_of(prot_bits);
        if (!p) return emit(to_string(iopgtable::errc::invalid));
        auto r = table_.map(input{iova}, iopgtable::pa_t{pa}, iopgtable::length_t{size}, *p);
        emit(r ? "ok" : to_string(r.error()));
    }

    void map_pages(std::uint64_t iova, std::uint64_t pa, std::uint64_t pgsize, std::uint64_t count, std::uint64_t prot_bits) {
        auto p = prot_of(prot_bits);
        if (!p) return emit(to_string(iopgtable::errc::invalid));
        auto r = table_.map_pages(input{iova}, iopgtable::pa_t{pa}, iopgtable::length_t{pgsize}, count, *p);
        emit(r ? to_hex(r->value) : std::string(to_string(r.error())));
    }

    void unmap(std::uint64_t iova, std::uint64_t size, iopgtable::unmap_mode mode) {
        auto r = table_.unmap(input{iova}, iopgtable::length_t{size}, mode);
        emit(r ? to_hex(r->value) : std::string(to_string(r.error())));
    }

    void iova(std::uint64_t iova) {
        auto pa = table_.iova_to_phys(input{iova});
        emit(pa ? to_hex(pa->value) : "none");
    }

    void walk(std::uint64_t iova) {
        using iopgtable::walk_status;
        const auto w = table_.lookup(input{iova});
        const std::string where = "level " + to_hex(w.level);
        const std::string reads = " reads " + to_hex(w.accesses);
        switch (w.status) {
        case walk_status::mapped:
            return emit("mapped " + where + " size " + to_hex(iopgtable::lg2_to_size(w.size_lg2)) + " oa " +
                        to_hex(w.oa.value) + " prot " + to_hex(iopgtable::to_bits(w.perm)) + " raw " + to_hex(w.raw) +
                        reads);
        case walk_status::unmapped:
            return emit("unmapped " + where + " raw " + to_hex(w.raw) + reads);
        case walk_status::bad_table:
            return emit("fault " + where + reads);
        case walk_status::out_of_range:
            return emit(to_string(iopgtable::errc::range));
        }
    }

    /// Every leaf entry (replicated copies each), then END; the error's name instead of END
    /// when the walk cannot cover the range.
    void dump(std::optional<std::array<std::uint64_t, 2>> range) {
        auto print = [](const iopgtable::leaf_entry<F>& e) {
            emit("LEAF " + to_hex(e.iova) + " " + to_hex(iopgtable::lg2_to_size(e.size_lg2)) + " " + to_hex(e.raw));
            return true;
        };
        auto r = range ? table_.visit(input{(*range)[0]}, input{(*range)[1]}, print) : table_.visit_all(print);
        emit(r ? "END" : to_string(r.error()));
    }

    void regs() {
        for (const auto& reg : F::registers(table_.cfg(), table_.geo(), table_.root()))
            emit(std::string(reg.name) + " " + to_hex(reg.value));
        emit("END");
    }

    void stats() {
        std::uint64_t mapped = 0, entries = 0;
        auto r = table_.visit_all([&](const iopgtable::leaf_entry<F>& e) {
            mapped += iopgtable::lg2_to_size(F::item_lg2(e.level));
            ++entries;
            return true;
        });
        emit("table_bytes " + to_hex(table_.table_bytes()));
        if (r) {
            emit("mapped_bytes " + to_hex(mapped));
            emit("leaf_entries " + to_hex(entries));
        }
        emit(r ? "END" : to_string(r.error()));
    }

    table& table_;
};

} // namespace iopt
