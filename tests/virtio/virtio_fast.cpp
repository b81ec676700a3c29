// SPDX-License-Identifier: MIT
// The fast protocol's guest side (virtio/driver.hpp; README.md "Fast protocol"): the MAP_SG
// and group builders field by field against the wire structs; negotiation of RELAXED, MAP_SG
// and GROUPED; config_fast as a driver reads it; the deferred unmapper's timing, batching and
// re-map rules against a recording transport and a fake clock, and against a model of a
// relaxed device (no UNMAP sent late may remove a newer mapping); and all of it end to end
// through the requestq of a simulated VM whose device offers the three features.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/virtio/driver.hpp>
#include <iopgtable/sim/machine.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

using namespace iopgtable;
using namespace iopgtable::virtio;

namespace {

using bytes = std::vector<std::uint8_t>;

template <class T>
T get_le(std::span<const std::uint8_t> b, std::size_t at) {
    REQUIRE(at + sizeof(T) <= b.size());
    le<T> v;
    std::memcpy(v.bytes.data(), b.data() + at, sizeof(T));
    return v.get();
}

constexpr std::uint64_t fbit(unsigned n) { return std::uint64_t{1} << n; }
constexpr std::uint64_t ms = 1'000'000;  // ns

/// Records every chain; answers `answer` in the tail, or `answer_for(readable)` when set.
struct recording_transport {
    struct seen {
        bytes readable;
        std::size_t writable_len;
    };
    std::vector<seen> log;
    std::uint8_t answer = 0;
    std::function<std::uint8_t(const bytes&)> answer_for;

    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        log.push_back({bytes(in.begin(), in.end()), out.size()});
        if (out.size() >= 4) out[out.size() - 4] = answer_for ? answer_for(log.back().readable) : answer;
        return static_cast<std::uint32_t>(out.size());
    }
};
static_assert(request_transport<recording_transport>);

/// One UNMAP as the unmapper sends it.
struct unmap_seen {
    std::uint32_t domain;
    std::uint64_t first, last;
    friend bool operator==(const unmap_seen&, const unmap_seen&) = default;
};

/// The requests of one chain: a plain request, or each part of a group (parsed by size), with
/// the head word of each.
struct part {
    std::uint8_t type;
    std::uint32_t head;
    bytes readable;
};
std::vector<part> split_chain(const bytes& chain) {
    std::vector<part> out;
    std::size_t at = 0;
    while (at + 4 <= chain.size()) {
        const std::uint8_t type = chain[at];
        std::size_t len = 0;
        switch (static_cast<req_type>(type)) {
        case req_type::attach: len = offsetof(req_attach, tail); break;
        case req_type::detach: len = offsetof(req_detach, tail); break;
        case req_type::map: len = offsetof(req_map, tail); break;
        case req_type::unmap: len = offsetof(req_unmap, tail); break;
        case req_type::map_sg:
            if (at + sizeof(req_map_sg) > chain.size()) return out;
            len = sizeof(req_map_sg) + 8 * std::size_t{get_le<std::uint32_t>(chain, at + offsetof(req_map_sg, nr_elems))};
            break;
        default: return out;
        }
        if (at + len > chain.size()) return out;
        out.push_back({type, get_le<std::uint32_t>(chain, at), bytes(chain.begin() + static_cast<std::ptrdiff_t>(at),
                                                                     chain.begin() + static_cast<std::ptrdiff_t>(at + len))});
        at += len;
    }
    return out;
}
std::vector<unmap_seen> unmaps_in(const recording_transport& t) {
    std::vector<unmap_seen> out;
    for (const auto& s : t.log)
        for (const auto& p : split_chain(s.readable))
            if (p.type == static_cast<std::uint8_t>(req_type::unmap))
                out.push_back({get_le<std::uint32_t>(p.readable, 4), get_le<std::uint64_t>(p.readable, 8),
                               get_le<std::uint64_t>(p.readable, 16)});
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Builders

TEST_CASE("fast: MAP_SG request, field by field", "[driver][fast][wire]") {
    const std::uint64_t phys[] = {0x2000000, 0x7000, 0xfffffffffffff000};
    const request r = map_sg_request(0x11223344, 0x40000000, 0x1000, map_f_read | map_f_write, phys);
    REQUIRE(r.readable.size() == sizeof(req_map_sg) + 3 * 8);
    CHECK(r.readable.size() == 56);
    CHECK(r.writable_len == sizeof(req_tail));
    CHECK(r.readable[0] == 0x43);
    CHECK(r.readable[1] == 0);
    CHECK(r.readable[2] == 0);
    CHECK(r.readable[3] == 0);
    CHECK(get_le<std::uint32_t>(r.readable, offsetof(req_map_sg, domain)) == 0x11223344);
    CHECK(get_le<std::uint64_t>(r.readable, offsetof(req_map_sg, virt_start)) == 0x40000000);
    CHECK(get_le<std::uint64_t>(r.readable, offsetof(req_map_sg, size)) == 0x1000);
    CHECK(get_le<std::uint32_t>(r.readable, offsetof(req_map_sg, flags)) == (map_f_read | map_f_write));
    CHECK(get_le<std::uint32_t>(r.readable, offsetof(req_map_sg, nr_elems)) == 3);
    for (std::size_t i = 0; i < 3; ++i) CHECK(get_le<std::uint64_t>(r.readable, 32 + 8 * i) == phys[i]);
    // The same bytes as the wire struct filled by hand.
    req_map_sg w;
    w.head.type = 0x43;
    w.domain = 0x11223344;
    w.virt_start = 0x40000000;
    w.size = 0x1000;
    w.flags = map_f_read | map_f_write;
    w.nr_elems = 3;
    CHECK(std::memcmp(r.readable.data(), &w, sizeof w) == 0);

    const request empty = map_sg_request(1, 0, 0x1000, map_f_read, {});
    CHECK(empty.readable.size() == 32);
    CHECK(get_le<std::uint32_t>(empty.readable, 28) == 0);
}

TEST_CASE("fast: group request, field by field", "[driver][fast][wire]") {
    const std::uint64_t phys[] = {0x5000, 0x9000};
    const std::vector<request> parts = {attach_request(1, 0), map_request(1, 0x1000, 0x1fff, 0x8000, map_f_read),
                                        map_sg_request(1, 0x10000, 0x1000, map_f_write, phys),
                                        unmap_request(1, 0x1000, 0x1fff)};
    auto g = group_request(parts);
    REQUIRE(g.ok());
    CHECK(g->writable_len == 4);  // one tail
    REQUIRE(g->readable.size() == 20 + 36 + 48 + 28);
    std::size_t at = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const auto& p = parts[i].readable;
        const std::uint32_t head = get_le<std::uint32_t>(g->readable, at);
        CHECK((head & 0xff) == p[0]);
        CHECK((head & ~std::uint32_t{0xff}) == (i + 1 == parts.size() ? req_f_group | req_f_last : req_f_group));
        // Everything after the head word is the part's bytes unchanged.
        CHECK(std::equal(p.begin() + 4, p.end(), g->readable.begin() + static_cast<std::ptrdiff_t>(at + 4)));
        at += p.size();
    }
    const auto split = split_chain(g->readable);
    REQUIRE(split.size() == 4);
    CHECK(split[2].type == 0x43);
    CHECK(split[3].head == (0x04u | req_f_group | req_f_last));

    SECTION("a single request is a group of one: G and L") {
        auto one = group_request(std::span(parts).first(1));
        REQUIRE(one.ok());
        CHECK(get_le<std::uint32_t>(one->readable, 0) == (1u | req_f_group | req_f_last));
    }
    SECTION("bits the part had in its head word are replaced, not kept") {
        std::vector<request> odd = {unmap_request(1, 0, 0xfff), unmap_request(1, 0x1000, 0x1fff)};
        odd[0].readable[1] = 0x02;  // an L on the first
        odd[0].readable[3] = 0x80;  // a reserved bit
        auto h = group_request(odd);
        REQUIRE(h.ok());
        CHECK(get_le<std::uint32_t>(h->readable, 0) == (4u | req_f_group));
        CHECK(get_le<std::uint32_t>(h->readable, 28) == (4u | req_f_group | req_f_last));
    }
    SECTION("refusals: empty, a part with a writable part beyond the tail, a part without a head") {
        CHECK_FALSE(group_request({}).ok());
        CHECK(group_request({}).why().code == status::inval);
        const std::vector<request> with_probe = {attach_request(1, 0), probe_request(0, 512)};
        CHECK_FALSE(group_request(with_probe).ok());
        const std::vector<request> with_table = {probe_table_request(0, 0, 2)};
        CHECK_FALSE(group_request(with_table).ok());
        std::vector<request> headless = {attach_request(1, 0)};
        headless[0].readable.resize(3);
        CHECK_FALSE(group_request(headless).ok());
        std::vector<request> no_tail = {attach_request(1, 0)};
        no_tail[0].writable_len = 0;
        CHECK_FALSE(group_request(no_tail).ok());
    }
    SECTION("groupable: the five types a group may hold") {
        for (unsigned t = 0; t < 256; ++t) {
            const bool want = t == 1 || t == 2 || t == 3 || t == 4 || t == 0x43;
            CHECK(groupable(static_cast<std::uint8_t>(t)) == want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation and config

TEST_CASE("fast: RELAXED, MAP_SG and GROUPED only when offered and wanted", "[driver][fast][features]") {
    const std::uint64_t v1 = fbit(f_version_1), mu = fbit(f_map_unmap), ts = fbit(f_table_sharing);
    const std::uint64_t rx = fbit(f_relaxed), sg = fbit(f_map_sg), gr = fbit(f_grouped), fast = rx | sg | gr;
    CHECK(negotiate_features(v1 | mu | fast, mu) == (v1 | mu));           // offered, not wanted
    CHECK(negotiate_features(v1 | mu, mu | fast) == (v1 | mu));           // wanted, not offered
    CHECK(negotiate_features(v1 | mu | fast, mu | fast) == (v1 | mu | fast));
    CHECK(negotiate_features(v1 | mu | fast, mu | rx) == (v1 | mu | rx));  // each on its own
    CHECK(negotiate_features(v1 | mu | fast, mu | sg) == (v1 | mu | sg));
    CHECK(negotiate_features(v1 | mu | fast, mu | gr) == (v1 | mu | gr));
    // RELAXED and MAP_SG are rules and kinds of MAP: not without MAP_UNMAP. GROUPED stays.
    CHECK(negotiate_features(v1 | mu | ts | fast, ts | fast) == (v1 | ts | gr));
    CHECK(negotiate_features(v1 | fast, fast) == 0);  // no way to map at all
    static_assert(negotiate_features(fbit(32) | fbit(2) | fbit(20), fbit(2) | fbit(20)) == (fbit(32) | fbit(2) | fbit(20)));
}

TEST_CASE("fast: config_fast as a driver reads it", "[driver][fast][config]") {
    config_fast c;
    c.relaxed_window_us = 10000;
    c.group_max = 64;
    c.map_sg_max = 1024;
    c.reserved[0] = 0xff;
    bytes raw(sizeof c);
    std::memcpy(raw.data(), &c, sizeof c);
    CHECK(offsetof(config_fast, relaxed_window_us) == 0);
    CHECK(offsetof(config_fast, group_max) == 4);
    CHECK(offsetof(config_fast, map_sg_max) == 8);
    CHECK(config_fast_offset == 40);

    const std::uint64_t all = fbit(f_relaxed) | fbit(f_map_sg) | fbit(f_grouped);
    CHECK(parse_config_fast(raw, all) == fast_config{10000, 64, 1024});
    CHECK(parse_config_fast(raw, fbit(f_relaxed)) == fast_config{10000, 0, 0});
    CHECK(parse_config_fast(raw, fbit(f_grouped)) == fast_config{0, 64, 0});
    CHECK(parse_config_fast(raw, fbit(f_map_sg)) == fast_config{0, 0, 1024});
    CHECK(parse_config_fast(raw, 0) == fast_config{});
    // Short or empty: what is there; longer: the rest ignored.
    CHECK(parse_config_fast(std::span(raw).first(6), all) == fast_config{10000, 64 & 0xffff, 0});
    CHECK(parse_config_fast({}, all) == fast_config{});
    bytes longer = raw;
    longer.resize(64, 0xee);
    CHECK(parse_config_fast(longer, all) == fast_config{10000, 64, 1024});

    const auto s = deferral_settings::from({10000, 64, 1024}, all);
    CHECK(s.window_ns == 10 * ms);
    CHECK(s.margin_ns == 5 * ms);
    CHECK(s.group_max == 64);
    CHECK(deferral_settings::from({10000, 100000, 1}, all).group_max == deferral_settings::max_group);
    CHECK(deferral_settings::from({10000, 64, 1024}, fbit(f_grouped)).window_ns == 0);  // strict: nothing deferred
    CHECK(deferral_settings::from({10000, 64, 1024}, fbit(f_relaxed)).group_max == 0);
}

// ---------------------------------------------------------------------------------------------
// The driver's MAP_SG and groups

TEST_CASE("fast: driver::map_sg and driver::send_group", "[driver][fast]") {
    recording_transport t;
    driver<recording_transport> d(t);
    const std::uint64_t phys[] = {0x3000, 0x1000};
    CHECK(d.map_sg(2, 0x100000, 0x1000, map_f_read, phys) == status::ok);
    REQUIRE(t.log.size() == 1);
    CHECK(t.log[0].readable == map_sg_request(2, 0x100000, 0x1000, map_f_read, phys).readable);
    CHECK(t.log[0].writable_len == 4);
    CHECK(d.sent(req_type::map_sg) == 1);

    const std::vector<request> parts = {attach_request(1, 0), unmap_request(1, 0, 0xfff)};
    t.answer = static_cast<std::uint8_t>(status::noent);
    CHECK(d.send_group(parts) == status::noent);
    REQUIRE(t.log.size() == 2);
    CHECK(t.log[1].readable == group_request(parts)->readable);
    CHECK(t.log[1].writable_len == 4);
    CHECK(d.groups() == 1);
    CHECK(d.sent(req_type::attach) == 1);
    CHECK(d.sent(req_type::unmap) == 1);
    CHECK(d.failures() == 1);

    // A group the builder refuses is not sent.
    const std::vector<request> bad = {probe_request(0, 64)};
    CHECK(d.send_group(bad) == status::inval);
    CHECK(d.send_group({}) == status::inval);
    CHECK(t.log.size() == 2);
    CHECK(d.groups() == 1);
}

// ---------------------------------------------------------------------------------------------
// The deferred unmapper

TEST_CASE("fast: deferred unmaps go out when due, not before", "[driver][fast][relaxed]") {
    recording_transport t;
    driver<recording_transport> d(t);
    deferral_settings s;
    s.window_ns = 10 * ms;
    s.margin_ns = 4 * ms;  // due at age 6 ms
    deferred_unmapper<recording_transport> u(d, s);

    CHECK(u.release(1, 0x1000, 0x1fff, 0) == status::ok);
    CHECK(u.release(1, 0x5000, 0x5fff, 2 * ms) == status::ok);
    CHECK(t.log.empty());
    CHECK(u.pending().size() == 2);
    CHECK(u.next_due() == 6 * ms);

    CHECK(u.poll(6 * ms - 1) == status::ok);
    CHECK(t.log.empty());
    CHECK(u.poll(6 * ms) == status::ok);  // the first is due, the second is not
    REQUIRE(t.log.size() == 1);
    CHECK(t.log[0].readable == unmap_request(1, 0x1000, 0x1fff).readable);
    CHECK(u.pending().size() == 1);
    CHECK(u.next_due() == 8 * ms);
    CHECK(u.stats().max_delay_ns == 6 * ms);

    // A release polls too: at 9 ms the second (age 7 ms) goes out; the new one waits.
    CHECK(u.release(2, 0x9000, 0x9fff, 9 * ms) == status::ok);
    REQUIRE(t.log.size() == 2);
    CHECK(t.log[1].readable == unmap_request(1, 0x5000, 0x5fff).readable);
    CHECK(u.pending().size() == 1);
    CHECK(u.stats().max_delay_ns == 7 * ms);

    // flush: everything now, with the age of the oldest.
    CHECK(u.flush(10 * ms) == status::ok);
    REQUIRE(t.log.size() == 3);
    CHECK(t.log[2].readable == unmap_request(2, 0x9000, 0x9fff).readable);
    CHECK(u.pending().empty());
    CHECK_FALSE(u.next_due().has_value());
    const auto& st = u.stats();
    CHECK(st.deferred == 3);
    CHECK(st.sent == 3);
    CHECK(st.requests == 3);
    CHECK(st.groups == 0);
    CHECK(st.flushes == 1);
    CHECK(st.oldest_at_flush_ns == 1 * ms);
    CHECK(st.failed == 0);
    CHECK(u.flush(11 * ms) == status::ok);  // nothing left: nothing sent
    CHECK(t.log.size() == 3);
    CHECK(u.stats().oldest_at_flush_ns == 0);
}

TEST_CASE("fast: no deferred unmap waits longer than the window when polled every margin", "[driver][fast][relaxed][property]") {
    rc::prop("max delay <= window", [] {
        recording_transport t;
        driver<recording_transport> d(t);
        deferral_settings s;
        s.window_ns = *rc::gen::inRange<std::uint64_t>(1, 20 * ms);
        s.margin_ns = *rc::gen::inRange<std::uint64_t>(1, s.window_ns + 1);
        s.group_max = *rc::gen::inRange<std::uint32_t>(0, 8);
        s.max_pending = *rc::gen::inRange<std::size_t>(1, 16);
        deferred_unmapper<recording_transport> u(d, s);
        std::uint64_t now = 0;
        const auto steps = *rc::gen::inRange(1, 200);
        for (int i = 0; i < steps; ++i) {
            now += *rc::gen::inRange<std::uint64_t>(0, s.margin_ns + 1);  // polled at least every margin
            if (*rc::gen::arbitrary<bool>()) {
                const std::uint64_t page = *rc::gen::inRange<std::uint64_t>(0, 64) << 12;
                RC_ASSERT(u.release(1, page, page + 0xfff, now) == status::ok);
            } else {
                RC_ASSERT(u.poll(now) == status::ok);
            }
            RC_ASSERT(u.stats().max_delay_ns <= s.window_ns);
            for (const auto& p : u.pending()) RC_ASSERT(now - p.released_ns < s.window_ns);
        }
        RC_ASSERT(u.flush(now) == status::ok);
        RC_ASSERT(u.stats().sent == u.stats().deferred);
        RC_ASSERT(unmaps_in(t).size() == u.stats().deferred);
    });
}

TEST_CASE("fast: due unmaps go out in groups of group_max", "[driver][fast][relaxed]") {
    recording_transport t;
    driver<recording_transport> d(t);
    deferral_settings s;
    s.window_ns = 10 * ms;
    s.margin_ns = 5 * ms;
    s.group_max = 4;
    deferred_unmapper<recording_transport> u(d, s);
    for (std::uint64_t i = 0; i < 9; ++i) REQUIRE(u.release(3, i << 12, (i << 12) + 0xfff, i) == status::ok);
    CHECK(t.log.empty());
    CHECK(u.poll(5 * ms + 8) == status::ok);
    // 4 + 4 in groups, the ninth alone as a plain UNMAP.
    REQUIRE(t.log.size() == 3);
    for (int c = 0; c < 2; ++c) {
        const auto parts = split_chain(t.log[static_cast<std::size_t>(c)].readable);
        REQUIRE(parts.size() == 4);
        for (std::size_t i = 0; i < 4; ++i)
            CHECK(parts[i].head == (4u | req_f_group | (i == 3 ? req_f_last : 0u)));
    }
    CHECK(t.log[2].readable == unmap_request(3, 8 << 12, (8 << 12) + 0xfff).readable);
    std::vector<unmap_seen> want;
    for (std::uint64_t i = 0; i < 9; ++i) want.push_back({3, i << 12, (i << 12) + 0xfff});
    CHECK(unmaps_in(t) == want);  // release order
    CHECK(u.stats().groups == 2);
    CHECK(u.stats().requests == 3);
    CHECK(u.stats().sent == 9);
    CHECK(d.groups() == 2);
}

TEST_CASE("fast: a refused group is sent again one UNMAP at a time", "[driver][fast][relaxed]") {
    recording_transport t;
    // Domain 9 is gone: NOENT for a group holding it (the device undid it) and for its UNMAP.
    t.answer_for = [](const bytes& in) {
        for (const auto& p : split_chain(in))
            if (p.type == 4 && get_le<std::uint32_t>(p.readable, 4) == 9) return static_cast<std::uint8_t>(status::noent);
        return std::uint8_t{0};
    };
    driver<recording_transport> d(t);
    deferral_settings s;
    s.window_ns = 10 * ms;
    s.margin_ns = 5 * ms;
    s.group_max = 8;
    deferred_unmapper<recording_transport> u(d, s);
    REQUIRE(u.release(1, 0x1000, 0x1fff, 0) == status::ok);
    REQUIRE(u.release(9, 0x1000, 0x1fff, 0) == status::ok);
    REQUIRE(u.release(1, 0x3000, 0x3fff, 0) == status::ok);
    CHECK(u.flush(1 * ms) == status::noent);
    REQUIRE(t.log.size() == 4);  // the group, then three UNMAPs
    CHECK(split_chain(t.log[0].readable).size() == 3);
    CHECK(t.log[1].readable == unmap_request(1, 0x1000, 0x1fff).readable);
    CHECK(t.log[2].readable == unmap_request(9, 0x1000, 0x1fff).readable);
    CHECK(t.log[3].readable == unmap_request(1, 0x3000, 0x3fff).readable);
    CHECK(u.stats().sent == 2);
    CHECK(u.stats().failed == 1);
    CHECK(u.stats().group_retries == 1);
    CHECK(u.pending().empty());  // the refused one is dropped, not retried forever
}

TEST_CASE("driver: requests are counted by type, types outside req_type together under 0", "[driver]") {
    recording_transport t;
    driver<recording_transport> d(t);
    (void)d.send(unmap_request(1, 0, 0xfff));
    (void)d.send(request{{0x99, 0, 0, 0, 0, 0, 0, 0}, 4});
    (void)d.send(request{{0x06, 0, 0, 0, 0, 0, 0, 0}, 4});  // between the base and the 0x40 types
    (void)d.send(request{{}, 4});                           // nothing readable: no type, not counted
    CHECK(t.log.size() == 4);
    CHECK(d.sent(req_type::unmap) == 1);
    CHECK(d.sent(req_type::map) == 0);
    CHECK(d.sent(static_cast<req_type>(0x99)) == 2);
    CHECK(d.sent(static_cast<req_type>(0)) == 2);
}

TEST_CASE("fast: without a window, or beyond max_pending, unmaps go out at once", "[driver][fast][relaxed]") {
    recording_transport t;
    driver<recording_transport> d(t);
    SECTION("window 0 (RELAXED not negotiated): strict") {
        deferred_unmapper<recording_transport> u(d, deferral_settings::from({10000, 64, 64}, fbit(f_grouped)));
        CHECK(u.release(1, 0, 0xfff, 5) == status::ok);
        REQUIRE(t.log.size() == 1);
        CHECK(t.log[0].readable == unmap_request(1, 0, 0xfff).readable);
        CHECK(u.pending().empty());
        CHECK(u.stats().max_delay_ns == 0);
    }
    SECTION("max_pending: the full buffer is flushed before the new one is held") {
        deferral_settings s;
        s.window_ns = 10 * ms;
        s.margin_ns = 1 * ms;
        s.max_pending = 2;
        deferred_unmapper<recording_transport> u(d, s);
        CHECK(u.release(1, 0, 0xfff, 0) == status::ok);
        CHECK(u.release(1, 0x1000, 0x1fff, 0) == status::ok);
        CHECK(t.log.empty());
        CHECK(u.release(1, 0x2000, 0x2fff, 0) == status::ok);
        CHECK(unmaps_in(t) == std::vector<unmap_seen>{{1, 0, 0xfff}, {1, 0x1000, 0x1fff}});
        REQUIRE(u.pending().size() == 1);
        CHECK(u.pending()[0].first == 0x2000);
        CHECK(u.stats().overflows == 1);
    }
    SECTION("a clock going backwards reads as age 0") {
        deferral_settings s;
        s.window_ns = 10 * ms;
        s.margin_ns = 1 * ms;
        deferred_unmapper<recording_transport> u(d, s);
        CHECK(u.release(1, 0, 0xfff, 50 * ms) == status::ok);
        CHECK(u.poll(0) == status::ok);
        CHECK(t.log.empty());
        CHECK(u.flush(0) == status::ok);
        CHECK(t.log.size() == 1);
        CHECK(u.stats().max_delay_ns == 0);
    }
    SECTION("a release stamped before the one held: the later-held unmap goes out first when due") {
        deferral_settings s;
        s.window_ns = 10 * ms;
        s.margin_ns = 5 * ms;  // due at age 5 ms
        deferred_unmapper<recording_transport> u(d, s);
        CHECK(u.release(1, 0, 0xfff, 100 * ms) == status::ok);
        CHECK(u.release(2, 0x1000, 0x1fff, 50 * ms) == status::ok);  // the clock went back
        // At 56 ms the second is 6 ms old; the first, released "later", reads as age 0. Release
        // order is not time order any more, so the poll looks past the head of the list.
        CHECK(u.poll(56 * ms) == status::ok);
        CHECK(unmaps_in(t) == std::vector<unmap_seen>{{2, 0x1000, 0x1fff}});
        REQUIRE(u.pending().size() == 1);
        CHECK(u.pending()[0].domain == 1);
        CHECK(u.poll(104 * ms) == status::ok);  // the first: 4 ms old
        CHECK(t.log.size() == 1);
        CHECK(u.poll(105 * ms) == status::ok);
        CHECK(unmaps_in(t) == std::vector<unmap_seen>{{2, 0x1000, 0x1fff}, {1, 0, 0xfff}});
        CHECK(u.pending().empty());
    }
}

TEST_CASE("fast: a MAP over a deferred unmap's range takes that range out of it", "[driver][fast][relaxed]") {
    recording_transport t;
    driver<recording_transport> d(t);
    deferral_settings s;
    s.window_ns = 10 * ms;
    s.margin_ns = 5 * ms;
    deferred_unmapper<recording_transport> u(d, s);
    using pu = deferred_unmapper<recording_transport>::pending_unmap;

    SECTION("the same range: dropped") {
        u.release(1, 0x10000, 0x13fff, 7);
        CHECK(u.map(1, 0x10000, 0x13fff, 0x80000, map_f_read) == status::ok);
        CHECK(u.pending().empty());
        CHECK(u.stats().replaced == 1);
    }
    SECTION("inside: split in two, release time kept") {
        u.release(1, 0x10000, 0x13fff, 7);
        CHECK(u.map(1, 0x11000, 0x11fff, 0x80000, map_f_read) == status::ok);
        REQUIRE(u.pending().size() == 2);
        CHECK(u.pending()[0] == pu{1, 0x10000, 0x10fff, 7});
        CHECK(u.pending()[1] == pu{1, 0x12000, 0x13fff, 7});
    }
    SECTION("across one end, and over several") {
        u.release(1, 0x10000, 0x13fff, 1);
        u.release(1, 0x20000, 0x20fff, 2);
        u.release(2, 0x13000, 0x13fff, 3);  // another domain: untouched
        CHECK(u.map(1, 0x12000, 0x20fff, 0x80000, map_f_read) == status::ok);
        REQUIRE(u.pending().size() == 2);
        CHECK(u.pending()[0] == pu{1, 0x10000, 0x11fff, 1});
        CHECK(u.pending()[1] == pu{2, 0x13000, 0x13fff, 3});
        CHECK(u.stats().replaced == 2);
    }
    SECTION("MAP_SG: its whole range") {
        u.release(1, 0x10000, 0x17fff, 1);
        const std::uint64_t phys[] = {0x1000, 0x9000, 0x4000};
        CHECK(u.map_sg(1, 0x12000, 0x2000, map_f_read, phys) == status::ok);  // 0x12000..0x17fff
        REQUIRE(u.pending().size() == 1);
        CHECK(u.pending()[0] == pu{1, 0x10000, 0x11fff, 1});
    }
    SECTION("a MAP the device refused changes nothing") {
        u.release(1, 0x10000, 0x13fff, 1);
        t.answer = static_cast<std::uint8_t>(status::nomem);
        CHECK(u.map(1, 0x10000, 0x13fff, 0x80000, map_f_read) == status::nomem);
        const std::uint64_t phys[] = {0x1000};
        CHECK(u.map_sg(1, 0x10000, 0x4000, map_f_read, phys) == status::nomem);
        CHECK(u.pending().size() == 1);
        CHECK(u.stats().replaced == 0);
    }
    SECTION("remapped at the top of the address space, and reversed ranges") {
        u.release(1, 0xfffffffffffff000, 0xffffffffffffffff, 1);
        u.remapped(1, 5, 4);  // nothing
        CHECK(u.pending().size() == 1);
        const std::uint64_t phys[] = {0x1000};
        CHECK(u.map_sg(1, 0xfffffffffffff000, 0x1000, map_f_read, phys) == status::ok);
        CHECK(u.pending().empty());
    }
    SECTION("forget: a domain's pending unmaps dropped unsent") {
        u.release(1, 0x10000, 0x13fff, 1);
        u.release(2, 0x10000, 0x13fff, 1);
        u.forget(1);
        REQUIRE(u.pending().size() == 1);
        CHECK(u.pending()[0].domain == 2);
        CHECK(u.stats().forgotten == 1);
    }
}

namespace {

/// A relaxed device in pages: MAP replaces, UNMAP carves, MAP_SG maps each element, a group
/// is all or nothing. Enough of the fast protocol's rules to check the unmapper against.
struct relaxed_model_transport {
    std::map<std::uint64_t, std::uint64_t> pages;  // (domain << 40 | page) → phys page

    std::uint32_t submit(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
        const bytes chain(in.begin(), in.end());
        const auto parts = split_chain(chain);
        auto copy = pages;
        bool ok = !parts.empty();
        for (const auto& p : parts) ok = ok && apply(copy, p);
        if (ok) pages = std::move(copy);
        out[out.size() - 4] = ok ? 0 : static_cast<std::uint8_t>(status::inval);
        return static_cast<std::uint32_t>(out.size());
    }
    static std::uint64_t key(std::uint32_t dom, std::uint64_t va) { return std::uint64_t{dom} << 40 | va >> 12; }
    static bool apply(std::map<std::uint64_t, std::uint64_t>& m, const part& p) {
        const auto& r = p.readable;
        const std::uint32_t dom = get_le<std::uint32_t>(r, 4);
        if (p.type == 3) {
            const std::uint64_t first = get_le<std::uint64_t>(r, 8), last = get_le<std::uint64_t>(r, 16);
            const std::uint64_t phys = get_le<std::uint64_t>(r, 24);
            for (std::uint64_t va = first; va <= last; va += 0x1000) m[key(dom, va)] = (phys + (va - first)) >> 12;
            return true;
        }
        if (p.type == 4) {
            const std::uint64_t first = get_le<std::uint64_t>(r, 8), last = get_le<std::uint64_t>(r, 16);
            for (std::uint64_t va = first; va <= last; va += 0x1000) m.erase(key(dom, va));
            return true;
        }
        if (p.type == 0x43) {
            const std::uint64_t start = get_le<std::uint64_t>(r, 8), size = get_le<std::uint64_t>(r, 16);
            const std::uint32_t n = get_le<std::uint32_t>(r, 28);
            for (std::uint32_t i = 0; i < n; ++i) {
                const std::uint64_t phys = get_le<std::uint64_t>(r, 32 + 8 * std::size_t{i});
                for (std::uint64_t off = 0; off < size; off += 0x1000)
                    m[key(dom, start + i * size + off)] = (phys + off) >> 12;
            }
            return true;
        }
        return false;
    }
};

} // namespace

TEST_CASE("fast: property: no late UNMAP removes a newer mapping", "[driver][fast][relaxed][property]") {
    // The guest's DMA layer: map IOVA ranges (through the unmapper), release them (deferred),
    // reuse them at once. Whatever the order and timing, every range the guest holds mapped is
    // mapped on the device as it asked, and after a flush nothing it released stays mapped.
    rc::prop("device mappings follow the guest's", [] {
        relaxed_model_transport t;
        driver<relaxed_model_transport> d(t);
        deferral_settings s;
        s.window_ns = 10 * ms;
        s.margin_ns = *rc::gen::inRange<std::uint64_t>(1, 10 * ms);
        s.group_max = *rc::gen::inRange<std::uint32_t>(0, 6);
        deferred_unmapper<relaxed_model_transport> u(d, s);
        std::map<std::uint64_t, std::uint64_t> held;  // the guest's live pages: key → phys page
        std::uint64_t now = 0, next_phys = 0x100;
        const auto steps = *rc::gen::inRange(1, 120);
        for (int i = 0; i < steps; ++i) {
            now += *rc::gen::inRange<std::uint64_t>(0, 3 * ms);
            const std::uint32_t dom = *rc::gen::inRange<std::uint32_t>(1, 3);
            const std::uint64_t first = *rc::gen::inRange<std::uint64_t>(0, 16) << 12;
            const std::uint64_t pages = *rc::gen::inRange<std::uint64_t>(1, 5), last = first + (pages << 12) - 1;
            switch (*rc::gen::inRange(0, 5)) {
            case 0: {  // MAP (the range may hold live or released pages: relaxed replaces)
                const std::uint64_t phys = (next_phys += 16) << 12;
                RC_ASSERT(u.map(dom, first, last, phys, map_f_read) == status::ok);
                for (std::uint64_t k = 0; k < pages; ++k) held[relaxed_model_transport::key(dom, first + (k << 12))] = (phys >> 12) + k;
                break;
            }
            case 1: {  // MAP_SG, one page an element
                std::vector<std::uint64_t> phys;
                for (std::uint64_t k = 0; k < pages; ++k) phys.push_back((next_phys += 3) << 12);
                RC_ASSERT(u.map_sg(dom, first, 0x1000, map_f_write, phys) == status::ok);
                for (std::uint64_t k = 0; k < pages; ++k) held[relaxed_model_transport::key(dom, first + (k << 12))] = phys[k] >> 12;
                break;
            }
            case 2:
            case 3:  // release: the guest no longer uses the range
                RC_ASSERT(u.release(dom, first, last, now) == status::ok);
                for (std::uint64_t k = 0; k < pages; ++k) held.erase(relaxed_model_transport::key(dom, first + (k << 12)));
                break;
            default: RC_ASSERT(u.poll(now) == status::ok); break;
            }
            for (const auto& [k, phys] : held) {
                const auto it = t.pages.find(k);
                RC_ASSERT(it != t.pages.end());
                RC_ASSERT(it->second == phys);
            }
        }
        RC_ASSERT(u.flush(now) == status::ok);
        RC_ASSERT(t.pages == held);
    });
}

// ---------------------------------------------------------------------------------------------
// End to end: the guest's driver through the requestq of a simulated VM (machine.hpp) whose
// device offers the fast protocol.

namespace {

using fast_machine = machine<arm_host>;
constexpr std::uint64_t host_base = 0x80000000, dma = fast_machine::dma_gpa;
constexpr std::uint32_t rw = map_f_read | map_f_write;

std::unique_ptr<fast_machine> make_fast(std::uint64_t offer, std::uint32_t group_max = 64, std::uint32_t map_sg_max = 1024) {
    machine_settings s;
    s.device.features |= offer;
    s.device.group_max = group_max;
    s.device.map_sg_max = map_sg_max;
    auto m = fast_machine::create(s);
    REQUIRE(m.ok());
    return std::move(*m);
}
constexpr std::uint64_t all_fast = fbit(f_relaxed) | fbit(f_map_sg) | fbit(f_grouped);

/// The host-physical address endpoint 0's read of `iova` reaches, or nothing (a fault).
std::optional<std::uint64_t> hpa(fast_machine& m, std::uint64_t iova) {
    const dma_result r = m.dev().translate(0, iova, 1, nested::access_kind::read);
    (void)m.take_events();
    if (!r.ok() || r.count != 1) return std::nullopt;
    return r.ranges[0].hpa;
}

} // namespace

TEST_CASE("fast e2e: the guest reads config_fast and negotiates the three features", "[driver][fast][e2e]") {
    auto m = make_fast(all_fast);
    CHECK((m->dev().driver_features() & all_fast) == all_fast);
    std::array<std::uint8_t, sizeof(config_fast)> raw{};
    m->dev().read_config(config_fast_offset, raw);
    const fast_config c = parse_config_fast(raw, m->dev().driver_features());
    CHECK(c == fast_config{10000, 64, 1024});
    const auto s = deferral_settings::from(c, m->dev().driver_features());
    CHECK(s.window_ns == 10 * ms);
    CHECK(s.margin_ns == 5 * ms);
    CHECK(s.group_max == 64);
    // Not offered: the fields read as zero and mean nothing.
    auto plain = make_fast(0);
    plain->dev().read_config(config_fast_offset, raw);
    CHECK(parse_config_fast(raw, ~std::uint64_t{0}) == fast_config{});
}

TEST_CASE("fast e2e: relaxed MAP replaces, an exact repeat changes nothing", "[driver][fast][e2e][relaxed]") {
    auto m = make_fast(all_fast);
    driver<fast_machine> d(*m);
    REQUIRE(d.attach(1, 0) == status::ok);
    REQUIRE(d.map(1, 0x100000, 0x103fff, dma, rw) == status::ok);  // (1) nothing there
    CHECK(hpa(*m, 0x102000) == host_base + dma + 0x2000);         // cached in the IOTLB now
    const auto inv = m->dev().iotlb_invalidations();
    // (2) over the upper half, no UNMAP first: the old translation is dropped.
    REQUIRE(d.map(1, 0x102000, 0x105fff, dma + 0x100000, rw) == status::ok);
    CHECK(hpa(*m, 0x100000) == host_base + dma);
    CHECK(hpa(*m, 0x102000) == host_base + dma + 0x100000);
    CHECK(hpa(*m, 0x105000) == host_base + dma + 0x103000);
    CHECK(m->dev().iotlb_invalidations() > inv);
    CHECK(m->dev().fast_stats().relaxed_replaced == 1);
    // (3) exactly the same: OK, nothing invalidated.
    const auto inv2 = m->dev().iotlb_invalidations();
    CHECK(d.map(1, 0x102000, 0x105fff, dma + 0x100000, rw) == status::ok);
    CHECK(m->dev().iotlb_invalidations() == inv2);
    CHECK(m->dev().fast_stats().relaxed_exact == 1);
    // Relaxed UNMAP carves a hole in the middle of a mapping.
    CHECK(d.unmap(1, 0x103000, 0x103fff) == status::ok);
    CHECK_FALSE(hpa(*m, 0x103000));
    CHECK(hpa(*m, 0x104000) == host_base + dma + 0x102000);
}

TEST_CASE("fast e2e: MAP_SG maps each element, all or nothing", "[driver][fast][e2e][map_sg]") {
    auto m = make_fast(fbit(f_map_sg), 64, 4);  // strict MAP rules, at most 4 elements
    driver<fast_machine> d(*m);
    REQUIRE(d.attach(1, 0) == status::ok);
    const std::uint64_t phys[] = {dma + 0x5000, dma, dma + 0x9000};
    CHECK(d.map_sg(1, 0x200000, 0x1000, rw, phys) == status::ok);
    for (std::uint64_t i = 0; i < 3; ++i) CHECK(hpa(*m, 0x200000 + i * 0x1000) == host_base + phys[i]);
    CHECK(m->dev().fast_stats().map_sg == 1);

    // The third element overlaps a mapping (strict mode): INVAL and none of the others.
    REQUIRE(d.map(1, 0x302000, 0x302fff, dma, rw) == status::ok);
    CHECK(d.map_sg(1, 0x300000, 0x1000, rw, phys) == status::inval);
    CHECK_FALSE(hpa(*m, 0x300000));
    CHECK_FALSE(hpa(*m, 0x301000));
    CHECK(hpa(*m, 0x302000) == host_base + dma);
    // Bounds: no element, more than map_sg_max.
    CHECK(d.map_sg(1, 0x400000, 0x1000, rw, {}) == status::inval);
    const std::uint64_t five[] = {dma, dma, dma, dma, dma};
    CHECK(d.map_sg(1, 0x400000, 0x1000, rw, five) == status::inval);
    CHECK_FALSE(hpa(*m, 0x400000));
    // A readable part longer than 32 + 8·nr_elems: INVAL.
    request longer = map_sg_request(1, 0x400000, 0x1000, rw, phys);
    longer.readable.resize(longer.readable.size() + 8);
    CHECK(d.send(longer).code == status::inval);
}

TEST_CASE("fast e2e: a group is one status, all or nothing", "[driver][fast][e2e][group]") {
    auto m = make_fast(all_fast, 4);
    driver<fast_machine> d(*m);
    const std::uint64_t phys[] = {dma + 0x3000, dma + 0x1000};
    SECTION("a group that succeeds") {
        const std::vector<request> parts = {attach_request(1, 0), map_request(1, 0x100000, 0x100fff, dma, rw),
                                            map_sg_request(1, 0x200000, 0x1000, rw, phys)};
        CHECK(d.send_group(parts) == status::ok);
        CHECK(hpa(*m, 0x100000) == host_base + dma);
        CHECK(hpa(*m, 0x201000) == host_base + dma + 0x1000);
        CHECK(m->dev().fast_stats().groups == 1);
    }
    SECTION("failing in its middle: the first failure's status, no trace") {
        REQUIRE(d.attach(1, 0) == status::ok);
        const std::vector<request> parts = {map_request(1, 0x100000, 0x100fff, dma, rw),
                                            map_request(7, 0x100000, 0x100fff, dma, rw),  // no domain 7: NOENT
                                            map_request(1, 0x101000, 0x101fff, dma, rw)};
        CHECK(d.send_group(parts) == status::noent);
        CHECK_FALSE(hpa(*m, 0x100000));
        CHECK_FALSE(hpa(*m, 0x101000));
        CHECK(m->dev().fast_stats().groups_failed == 1);
        CHECK(m->dev().fast_stats().rollbacks >= 1);
    }
    SECTION("more than group_max: INVAL, nothing done") {
        std::vector<request> parts = {attach_request(1, 0)};
        for (std::uint64_t i = 0; i < 4; ++i) parts.push_back(map_request(1, i << 12, (i << 12) + 0xfff, dma, rw));
        CHECK(d.send_group(parts) == status::inval);
        CHECK_FALSE(hpa(*m, 0));
        CHECK(d.map(1, 0, 0xfff, dma, rw) == status::noent);  // the ATTACH did not happen either
    }
    SECTION("a type a group may not hold: INVAL, nothing done") {
        const std::vector<request> parts = {attach_request(1, 0), invalidate_request(1, 0, invalidate_kind::single)};
        CHECK(d.send_group(parts) == status::inval);
        CHECK(d.map(1, 0, 0xfff, dma, rw) == status::noent);
    }
}

TEST_CASE("fast e2e: without GROUPED the G and L bits are ignored", "[driver][fast][e2e][group]") {
    auto m = make_fast(fbit(f_relaxed) | fbit(f_map_sg));
    driver<fast_machine> d(*m);
    // One ATTACH with G|L: an ordinary ATTACH.
    auto one = group_request(std::vector<request>{attach_request(1, 0)});
    REQUIRE(one.ok());
    CHECK(d.send(*one).code == status::ok);
    // Two requests: one request whose readable part is too long: INVAL, nothing done.
    auto two = group_request(std::vector<request>{map_request(1, 0, 0xfff, dma, rw), map_request(1, 0x1000, 0x1fff, dma, rw)});
    REQUIRE(two.ok());
    CHECK(d.send(*two).code == status::inval);
    CHECK_FALSE(hpa(*m, 0));
}

TEST_CASE("fast e2e: deferred unmaps in relaxed mode, and why a re-MAP must go through the unmapper",
          "[driver][fast][e2e][relaxed]") {
    auto m = make_fast(all_fast);
    driver<fast_machine> d(*m);
    std::array<std::uint8_t, sizeof(config_fast)> raw{};
    m->dev().read_config(config_fast_offset, raw);
    const auto settings = deferral_settings::from(parse_config_fast(raw, m->dev().driver_features()), m->dev().driver_features());
    deferred_unmapper<fast_machine> u(d, settings);
    REQUIRE(d.attach(1, 0) == status::ok);
    for (std::uint64_t i = 0; i < 4; ++i) REQUIRE(u.map(1, i << 12, (i << 12) + 0xfff, dma + (i << 12), rw) == status::ok);

    // Released at t = 0: not sent, and the device still translates: the vulnerability window.
    for (std::uint64_t i = 0; i < 3; ++i) REQUIRE(u.release(1, i << 12, (i << 12) + 0xfff, 0) == status::ok);
    CHECK(d.sent(req_type::unmap) == 0);
    CHECK(hpa(*m, 0x1000) == host_base + dma + 0x1000);
    // Page 1 reused at once with another buffer: the MAP replaces it, no UNMAP needed.
    REQUIRE(u.map(1, 0x1000, 0x1fff, dma + 0x40000, rw) == status::ok);
    CHECK(hpa(*m, 0x1000) == host_base + dma + 0x40000);
    // At 5 ms the other two are due: one group of two UNMAPs; page 1 keeps its new mapping.
    CHECK(u.poll(5 * ms - 1) == status::ok);
    CHECK(d.groups() == 0);
    CHECK(u.poll(5 * ms) == status::ok);
    CHECK(d.groups() == 1);
    CHECK(d.sent(req_type::unmap) == 2);
    CHECK_FALSE(hpa(*m, 0));
    CHECK_FALSE(hpa(*m, 0x2000));
    CHECK(hpa(*m, 0x1000) == host_base + dma + 0x40000);
    CHECK(hpa(*m, 0x3000) == host_base + dma + 0x3000);
    CHECK(u.stats().sent == 2);
    CHECK(u.stats().replaced == 1);
    CHECK(u.stats().max_delay_ns == 5 * ms);
    CHECK(m->dev().fast_stats().groups == 1);

    // The hazard the rule prevents: a MAP sent around the unmapper, then the late UNMAP
    // removes the NEW mapping.
    REQUIRE(u.release(1, 0x3000, 0x3fff, 6 * ms) == status::ok);
    REQUIRE(d.map(1, 0x3000, 0x3fff, dma + 0x50000, rw) == status::ok);  // not through u
    CHECK(hpa(*m, 0x3000) == host_base + dma + 0x50000);
    CHECK(u.flush(7 * ms) == status::ok);
    CHECK_FALSE(hpa(*m, 0x3000));  // gone: what `map` / `remapped` exist for
    CHECK(u.stats().oldest_at_flush_ns == 1 * ms);
}
