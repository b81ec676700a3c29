// SPDX-License-Identifier: MIT
#pragma once
/// @file leaf_model.hpp
/// The reference model `fuzz_ops` checks the engine against: an ordered map from each leaf's
/// input address to its size, output address and prot. It knows nothing of tables or formats,
/// only the page-size bitmap, and restates the engine's documented behaviour in the plainest
/// way: greedy largest-page choice, overlap means `exists`, cutting a leaf means `partial`,
/// splitting goes to the next smaller page size.
#include <array>
#include <bit>
#include <cstddef>
#include <cstdlib>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory_resource>
#include <optional>

#include <iopgtable/core/bits.hpp>
#include <iopgtable/core/prot.hpp>

namespace iopgtable::fuzz {

struct model_leaf {
    std::uint64_t pa = 0;  ///< output address of the leaf's first byte
    unsigned lg2 = 0;      ///< leaf size
    prot perm = prot::none;
};

/// The largest size in `bitmap` that `va` and `pa` are aligned to and that fits in `length`;
/// 0 when none. Brute force on purpose: it is the reference for the engine's choice.
inline unsigned reference_page_lg2(std::uint64_t bitmap, std::uint64_t va, std::uint64_t pa,
                                   std::uint64_t length) noexcept {
    for (int lg2 = 63; lg2 >= 0; --lg2) {
        if (((bitmap >> lg2) & 1) == 0) continue;
        const std::uint64_t size = std::uint64_t{1} << lg2;
        if ((va % size) == 0 && (pa % size) == 0 && size <= length) return static_cast<unsigned>(lg2);
    }
    return 0;
}

/// Calls `fn(va, pa, lg2)` for each leaf a greedy map of [va, va + size) → pa with the sizes of
/// `bitmap` places, in order; `fn` returns false to stop. Preconditions: size > 0, va, pa and
/// size aligned to the smallest size, no wrap.
template <class Fn>
void greedy_leaves(std::uint64_t bitmap, std::uint64_t va, std::uint64_t pa, std::uint64_t size, Fn&& fn) {
    const std::uint64_t last = va + size - 1;
    std::uint64_t pos = va;
    for (;;) {
        const unsigned lg2 = reference_page_lg2(bitmap, pos, pa + (pos - va), last - pos + 1);
        if (!fn(pos, pa + (pos - va), lg2)) return;
        const std::uint64_t next = pos + lg2_to_size(lg2);
        if (next - 1 >= last) return;
        pos = next;
    }
}

class leaf_model {
public:
    /// The leaves live in an arena: a static 4 MiB buffer handed out by a monotonic resource,
    /// spilling to the heap only past it, and reset when the model is destroyed. An input maps
    /// thousands of leaves, and a sanitizer allocation with its stack trace per leaf was a sixth
    /// of a fuzz_ops execution. The arena rather than a growing pool: a pool that keeps what it
    /// took from the heap makes every input that needs more leaves than any before it allocate
    /// more than it frees, and while fuzzing libFuzzer answers each such input by running it a
    /// second time and then a leak scan. With the arena an input frees what it took. One model
    /// at a time (one fuzzer thread): a second live model is refused.
    using map_type = std::pmr::map<std::uint64_t, model_leaf>;

    leaf_model() {
        if (live()++ != 0) std::abort();
    }
    leaf_model(const leaf_model&) = delete;
    leaf_model& operator=(const leaf_model&) = delete;
    ~leaf_model() {
        leaves_.clear();
        arena().release();
        --live();
    }

    const map_type& leaves() const noexcept { return leaves_; }
    std::uint64_t mapped_bytes() const noexcept { return bytes_; }

    /// The leaf containing `va`, or end().
    map_type::const_iterator find(std::uint64_t va) const {
        auto it = leaves_.upper_bound(va);
        if (it == leaves_.begin()) return leaves_.end();
        --it;
        return va - it->first <= low_mask(it->second.lg2) ? it : leaves_.end();
    }
    /// What `va` translates to, if anything.
    std::optional<std::uint64_t> translate(std::uint64_t va) const {
        auto it = find(va);
        if (it == leaves_.end()) return std::nullopt;
        return it->second.pa + (va - it->first);
    }
    /// True when any leaf intersects [va, last].
    bool overlaps(std::uint64_t va, std::uint64_t last) const {
        if (find(va) != leaves_.end()) return true;
        auto it = leaves_.lower_bound(va);
        return it != leaves_.end() && it->first <= last;
    }
    /// True when a leaf intersects [va, last] without lying inside it (an exact unmap would cut it).
    bool cuts(std::uint64_t va, std::uint64_t last) const {
        auto first = find(va);
        if (first != leaves_.end() && first->first < va) return true;
        auto end_leaf = find(last);
        return end_leaf != leaves_.end() && end_leaf->first + low_mask(end_leaf->second.lg2) > last;
    }
    /// Bytes of the leaves inside [va, last].
    std::uint64_t bytes_inside(std::uint64_t va, std::uint64_t last) const {
        std::uint64_t bytes = 0;
        for (auto it = leaves_.lower_bound(va); it != leaves_.end() && it->first <= last; ++it)
            bytes += lg2_to_size(it->second.lg2);
        return bytes;
    }

    void add(std::uint64_t va, const model_leaf& leaf) {
        leaves_.emplace(va, leaf);
        bytes_ += lg2_to_size(leaf.lg2);
    }
    /// Removes the leaves inside [va, last], calling `fn(va, leaf)` for each.
    template <class Fn>
    void remove_inside(std::uint64_t va, std::uint64_t last, Fn&& fn) {
        auto it = leaves_.lower_bound(va);
        while (it != leaves_.end() && it->first <= last) {
            fn(it->first, it->second);
            bytes_ -= lg2_to_size(it->second.lg2);
            it = leaves_.erase(it);
        }
    }

    /// The largest size in `bitmap` below 2^lg2, or 0.
    static unsigned next_smaller(std::uint64_t bitmap, unsigned lg2) noexcept {
        const std::uint64_t below = bitmap & low_mask(lg2);
        return below == 0 ? 0 : 63 - static_cast<unsigned>(std::countl_zero(below));
    }
    /// Calls `fn(from_lg2, to_lg2)` for each step that splitting at `boundary` would take: the
    /// leaf holding `boundary` strictly inside becomes leaves of the next smaller size, and the
    /// one of those holding `boundary` is split again, until `boundary` is a leaf edge.
    template <class Fn>
    void split_steps(std::uint64_t bitmap, std::uint64_t boundary, Fn&& fn) const {
        auto it = find(boundary);
        if (it == leaves_.end()) return;
        unsigned lg2 = it->second.lg2;
        while ((boundary & low_mask(lg2)) != 0) {
            const unsigned to = next_smaller(bitmap, lg2);
            fn(lg2, to);
            if (to == 0) return;  // boundary finer than the smallest page: caller's bug
            lg2 = to;
        }
    }
    /// Performs the split `split_steps` describes.
    void split(std::uint64_t bitmap, std::uint64_t boundary) {
        for (;;) {
            auto it = find(boundary);
            if (it == leaves_.end() || it->first == boundary) return;
            const std::uint64_t base = it->first;
            const model_leaf leaf = it->second;
            const unsigned to = next_smaller(bitmap, leaf.lg2);
            if (to == 0) return;
            leaves_.erase(it);
            for (std::uint64_t off = 0; off < lg2_to_size(leaf.lg2); off += lg2_to_size(to))
                leaves_.emplace(base + off, model_leaf{leaf.pa + off, to, leaf.perm});
        }
    }

private:
    static std::pmr::monotonic_buffer_resource& arena() {
        static std::array<std::byte, std::size_t{4} << 20> buffer;
        static std::pmr::monotonic_buffer_resource r{buffer.data(), buffer.size()};
        return r;
    }
    static unsigned& live() {
        static unsigned n = 0;
        return n;
    }
    map_type leaves_{&arena()};
    std::uint64_t bytes_ = 0;
};

} // namespace iopgtable::fuzz
