// SPDX-License-Identifier: MIT
// Page-table sharing round trip (issue 4), for every guest-shareable format of `all_formats`
// and each of its sample configurations, then for random configurations (rapidcheck): the
// driver builds a table in guest RAM, describes it with make_attach_table, the device
// validates the request into a binding, and the binding must have the table's geometry and
// translate every address exactly as the driver's own table does. Also: stage-2 formats are
// never offered nor bound, pick_format chooses what the device offers, and PROBE_TABLE replies
// truncate to the driver's buffer while still counting every format.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <boost/hana/tuple.hpp>
#include <rapidcheck.h>
#include <rapidcheck/catch.h>

#include "support/format_list.hpp"
#include "sharing/sharing_fixture.hpp"

using namespace iopgtable;
using namespace iopgtable::test;
namespace hana = boost::hana;

namespace {

template <class F>
constexpr bool is_lpae64 = F::sharing_model == sharing::model_arm && F::sharing_variant == sharing::arm_lpae64;
template <class F>
struct is_lpae_s1 : std::false_type {};
template <unsigned G>
struct is_lpae_s1<arm_lpae<lpae_stage::s1, G>> : std::true_type {};
template <class F>
constexpr bool is_arm_short = F::sharing_model == sharing::model_arm && F::sharing_variant == sharing::arm_short;

/// Whether the registry's config blob (formats/README.md) carries every part of `cfg` that
/// shapes the table or its translations, so that ATTACH_TABLE can describe it. LPAE: TCR_EL1
/// has T0SZ, TG0, IPS, walk attributes and HA/HD, but no NS. Short descriptor: TTBCR.N must be
/// 0 (IAS 32) and no quirk has a field. VT-d first stage: the address width is all there is to
/// the table's shape (HAW, 1G support and dirty tracking are the device's).
template <class F>
bool expressible(const typename F::config& cfg) {
    if constexpr (is_lpae64<F>) return (cfg.quirks & lpae_quirk::ns) == 0;
    else if constexpr (is_arm_short<F>) return cfg.ias == 32 && cfg.quirks == 0;
    else return true;
}

/// Whether the config blob carries the OAS and so the page sizes (LPAE: IPS). Otherwise the
/// binding gets the format's defaults (v7s OAS 32; VT-d HAW 52 and 1G pages), which must cover
/// the driver's.
template <class F>
constexpr bool carries_oas = is_lpae64<F>;

/// Where the round trip puts guest RAM and the driver's tables, and the tag it asks for.
struct placement {
    std::uint64_t ram_base = iopgtable::test::ram_base;
    std::uint64_t ram_size = 16ull << 20;
    std::uint64_t pool_offset = 0;  ///< the driver's tables are allocated from here on
    std::uint32_t tag = 0;
};

std::string status_text(const sharing::refusal& r) {
    return std::string(virtio::to_string(r.code)) + " " + std::string(r.field);
}

/// The round trip for one configuration; "" when everything holds, else the first problem.
/// Throws std::runtime_error when the driver cannot build its table.
template <class F, class Device>
std::string round_trip_problem(const Device& device, const typename F::config& cfg, const placement& where) {
    guest_ram ram{where.ram_size, pa_t{where.ram_base}};
    ram.set_table_pool(pa_t{where.ram_base + where.pool_offset}, where.ram_size - where.pool_offset);
    auto created = page_table<F, guest_ram>::create(cfg, ram);
    if (!created) throw std::runtime_error("create: " + std::string(to_string(created.error())));
    auto& pt = *created;
    const auto maps = map_sample(pt);
    const geometry want = pt.geo();

    auto req = sharing::make_attach_table<F>(cfg, pt.root(), where.tag);
    if (!expressible<F>(cfg)) {
        if (req) return "make_attach_table described a configuration the config blob cannot carry";
        if (req.why().code != virtio::status::unsupp) return "refused with " + status_text(req.why());
        return {};
    }
    if (!req) return "make_attach_table refused: " + status_text(req.why());
    if (req->head.type != static_cast<std::uint8_t>(virtio::req_type::attach_table) ||
        req->model.get() != F::sharing_model || req->table.get() != pt.root().value || req->flags.get() != 0 ||
        req->nr_contexts.get() != 0)
        return "request head, model, table, flags or nr_contexts wrong";
    if (le32_at(req->config, 0) != F::sharing_variant) return "config variant wrong";

    auto bound = sharing::validate_attach(device, *req, ram);
    if (!bound) return "validate_attach refused: " + status_text(bound.why());
    const bool same_engine = bound->with_engine(
        [](const auto& e) { return std::is_same_v<typename std::decay_t<decltype(e)>::format, F>; });
    if (!same_engine) return std::string("bound to another engine: ") + bound->format_name();
    const geometry got = bound->geo();
    if (got.levels != want.levels || got.top_index_lg2 != want.top_index_lg2 || got.ias != want.ias)
        return "bound shape " + describe(got) + ", driver " + describe(want);
    if (carries_oas<F> ? (got.oas != want.oas || got.pgsize_bitmap != want.pgsize_bitmap)
                       : (got.oas < want.oas || (got.pgsize_bitmap & want.pgsize_bitmap) != want.pgsize_bitmap))
        return "bound OAS / page sizes " + describe(got) + ", driver " + describe(want);
    if (bound->model() != F::sharing_model || bound->tag() != where.tag || bound->table() != pt.root() ||
        bound->nr_contexts() != 1 || bound->flags() != 0 || bound->indirect())
        return "binding model, tag, table, contexts or flags wrong";

    for (std::uint64_t va : probe_addresses(maps, want))
        if (auto d = translation_difference(pt, *bound, ram, 0, va); !d.empty()) return d;
    // The same leaves, seen through an engine over the bound table.
    const auto leaves = leaves_of(pt);
    auto seen = bound->with_table(ram, 0, [&](auto& t) { return dump_difference(leaves_of(t), leaves); });
    if (!seen) return "with_table refused: " + status_text(seen.why());
    if (!seen->empty()) return "bound table's leaves differ: " + *seen;
    return {};
}

} // namespace

TEMPLATE_LIST_TEST_CASE("sharing: every sample configuration round-trips through ATTACH_TABLE", "[sharing]",
                        format_list) {
    using F = TestType;
    const auto device = full_device();
    const auto alone = only(device, [](auto t) { return std::is_same_v<typename decltype(t)::type, F>; });
    const auto offered_alone = sharing::offered_formats(alone);
    guest_ram ram{16ull << 20, pa_t{ram_base}};

    if constexpr (!F::guest_shareable) {
        // Stage-2-only: never offered, never described, never bound.
        CHECK(offered_alone.empty());
        for (const auto& entry : sharing::offered_formats(device))
            CHECK(!(entry.model.get() == sharing::model_x86 && le32_at(entry.format, 0) == sharing::x86_vtd_second_stage));
        for (const auto& s : samples<F>()) {
            INFO(s.label);
            auto req = sharing::make_attach_table<F>(s.cfg, pa_t{ram_base}, 0);
            REQUIRE(!req);
            CHECK(req.why().code == virtio::status::unsupp);
        }
        // A request with F's model and variant and an otherwise well-formed config: a device
        // walking only F has nothing to bind it to.
        sharing::blob b;
        if constexpr (F::sharing_model == sharing::model_arm) b = lpae_blob(tcr_of(48, F::tg0_encoding, 5));
        else b = vtd_blob(48, 0, F::sharing_variant);
        {
            auto bound = sharing::validate_attach(alone, attach_request(F::sharing_model, b, ram_base), ram);
            REQUIRE(!bound);
            CHECK(bound.why().code == virtio::status::unsupp);
            CHECK(bound.why().field == "config.variant");
        }
        if constexpr (F::sharing_model == sharing::model_x86) {  // X86 variant 2 names the stage-2 format
            auto bound = sharing::validate_attach(device, attach_request(F::sharing_model, b, ram_base), ram);
            REQUIRE(!bound);
            CHECK(bound.why().code == virtio::status::unsupp);
            CHECK(bound.why().field == "config.variant");
        }
    } else {
        // The device walking F alone offers exactly one entry, F's model and variant, within
        // whose limits every sample configuration lies.
        REQUIRE(offered_alone.size() == 1);
        auto caps = sharing::decode_format(offered_alone[0]);
        REQUIRE(caps);
        CHECK(caps->model == F::sharing_model);
        CHECK(caps->variant == F::sharing_variant);
        CHECK(caps->tag_bits == 16);
        const auto lim = F::make_geometry(device_limits<F>());
        REQUIRE(lim);
        CHECK(caps->max_ias == lim->ias);
        CHECK(caps->max_oas == lim->oas);
        CHECK(caps->pgsize_bitmap == lim->pgsize_bitmap);
        if constexpr (F::sharing_model == sharing::model_arm) CHECK(caps->sizes == (1u << F::item_lg2(0)));
        else CHECK((caps->sizes & (1u << lim->levels)) != 0);

        int described = 0;
        for (const auto& s : samples<F>()) {
            INFO(s.label);
            CHECK(s.geo.ias <= caps->max_ias);
            CHECK(s.geo.oas <= caps->max_oas);
            CHECK((s.geo.pgsize_bitmap & ~caps->pgsize_bitmap) == 0);
            placement where;
            where.tag = 0xbeef;
            CHECK(round_trip_problem<F>(device, s.cfg, where) == "");
            if (!expressible<F>(s.cfg)) continue;
            ++described;
            // The driver, offered what the whole device walks, picks F with this configuration.
            int calls = 0;
            const bool picked = sharing::pick_format(hana::make_tuple(sharing::guest_format<F>{s.cfg}),
                                                     sharing::offered_formats(device), [&](auto g) {
                                                         ++calls;
                                                         CHECK(g.want == s.cfg);
                                                     });
            CHECK(picked);
            CHECK(calls == 1);
        }
        CHECK(described > 0);  // the registry can describe at least one configuration of F
    }
}

TEST_CASE("sharing: sample round trip with the tables anywhere in guest RAM", "[sharing]") {
    // The root and the tables below it at the very end of guest RAM, RAM not at 1 GiB.
    const auto device = full_device();
    placement where;
    where.ram_base = 0x80000000;
    where.ram_size = 8ull << 20;
    where.pool_offset = (8ull << 20) - (1ull << 20);
    where.tag = 0xffff;
    CHECK(round_trip_problem<arm_lpae_s1_64k>(device, arm_lpae_s1_64k::sample_configs().front(), where) == "");
    CHECK(round_trip_problem<arm_v7s>(device, arm_v7s::sample_configs().front(), where) == "");
    CHECK(round_trip_problem<vtd_fl>(device, vtd_fl::sample_configs().front(), where) == "");
}

TEST_CASE("sharing: pick_format prefers the guest's order among what is offered", "[sharing]") {
    const auto device = full_device();
    using guest_t = decltype(hana::make_tuple(sharing::guest_format<vtd_fl>{}, sharing::guest_format<arm_lpae_s1_64k>{},
                                              sharing::guest_format<arm_lpae_s1_4k>{}));
    const guest_t guest{};
    auto picked_name = [&](const auto& dev) {
        std::string name;
        const auto offered = sharing::offered_formats(dev);
        sharing::pick_format(guest, offered, [&](auto g) {
            using G = typename decltype(g)::format;
            name = std::string(G::name) + "/" + std::to_string(G::item_lg2(0));
        });
        return name;
    };
    CHECK(picked_name(device) == "vtd-fl/12");
    const auto arm_only = only(device, [](auto t) { return decltype(t)::type::sharing_model == sharing::model_arm; });
    CHECK(picked_name(arm_only) == "arm-lpae-s1/16");
    const auto no_64k = only(arm_only, [](auto t) { return !std::is_same_v<typename decltype(t)::type, arm_lpae_s1_64k>; });
    CHECK(picked_name(no_64k) == "arm-lpae-s1/12");
    const auto v7s_only = only(device, [](auto t) { return std::is_same_v<typename decltype(t)::type, arm_v7s>; });
    CHECK(picked_name(v7s_only) == "");
    CHECK_FALSE(sharing::pick_format(guest, std::span<const virtio::pg_format>{}, [](auto) {}));
}

TEST_CASE("sharing: pick_format lowers IAS/OAS to the device's and the device then accepts", "[sharing]") {
    // A device whose 4k LPAE walker stops at 40 bits in and out.
    auto device = hana::make_tuple(sharing::device_format<arm_lpae_s1_4k>{lpae_config{40, 40}, 8});
    const auto offered = sharing::offered_formats(device);
    REQUIRE(offered.size() == 1);
    auto caps = sharing::decode_format(offered[0]);
    REQUIRE(caps);
    CHECK(caps->max_ias == 40);
    CHECK(caps->max_oas == 40);
    CHECK(caps->tag_bits == 8);
    CHECK(caps->flags == 0);

    guest_ram ram{16ull << 20, pa_t{ram_base}};
    lpae_config chosen{};
    const bool picked = sharing::pick_format(hana::make_tuple(sharing::guest_format<arm_lpae_s1_4k>{lpae_config{48, 48}}),
                                             offered, [&](auto g) { chosen = g.want; });
    REQUIRE(picked);
    CHECK(chosen.ias == 40);
    CHECK(chosen.oas == 40);
    auto pt = page_table<arm_lpae_s1_4k, guest_ram>::create(chosen, ram);
    REQUIRE(pt);
    auto req = sharing::make_attach_table<arm_lpae_s1_4k>(chosen, pt->root(), 0xff);
    REQUIRE(req);
    auto bound = sharing::validate_attach(device, *req, ram);
    REQUIRE(bound);
    CHECK(bound->geo().ias == 40);
    // The unlowered configuration is refused by the same device.
    auto big = page_table<arm_lpae_s1_4k, guest_ram>::create(lpae_config{48, 48}, ram);
    REQUIRE(big);
    auto req48 = sharing::make_attach_table<arm_lpae_s1_4k>(lpae_config{48, 48}, big->root(), 0);
    REQUIRE(req48);
    auto refused = sharing::validate_attach(device, *req48, ram);
    REQUIRE(!refused);
    CHECK(refused.why().code == virtio::status::range);
}

TEST_CASE("sharing: PROBE_TABLE replies count every format and truncate to the buffer", "[sharing]") {
    const auto offered = sharing::offered_formats(full_device());
    // ARM LPAE 64-bit (the three stage-1 granules merged), ARM short descriptor, X86 VT-d first
    // stage, RISC-V first stage.
    constexpr std::size_t n = 4;
    REQUIRE(offered.size() == n);
    const std::uint32_t order[n][2] = {{sharing::model_arm, sharing::arm_lpae64},
                                       {sharing::model_arm, sharing::arm_short},
                                       {sharing::model_x86, sharing::x86_vtd_first_stage},
                                       {sharing::model_riscv, sharing::riscv_first_stage}};
    for (std::size_t i = 0; i < n; ++i) {
        auto c = sharing::decode_format(offered[i]);
        REQUIRE(c);
        CHECK(c->model == order[i][0]);
        CHECK(c->variant == order[i][1]);
    }
    auto lpae = sharing::decode_format(offered[0]);
    CHECK(lpae->sizes == ((1u << 12) | (1u << 14) | (1u << 16)));
    CHECK(lpae->max_ias == 52);

    constexpr std::size_t head = sizeof(virtio::probe_table_reply), slot = sizeof(virtio::pg_format);
    static_assert(head == 8 && slot == 68);
    for (std::size_t bytes : {head, head + slot - 1, head + slot, head + 2 * slot + 67, head + n * slot,
                              head + (n + 2) * slot + 3}) {
        INFO("writable buffer of " << bytes << " bytes");
        std::vector<std::uint8_t> buf(bytes, 0xa5);  // stale bytes the device must clear
        CHECK(sharing::write_probe_table(offered, 7, buf) == bytes);
        const std::size_t slots = (bytes - head) / slot;
        // Unused slots and trailing bytes are zero.
        for (std::size_t i = head + std::min<std::size_t>(slots, n) * slot; i < bytes; ++i) REQUIRE(buf[i] == 0);
        auto r = sharing::parse_probe_table(buf);
        REQUIRE(r);
        CHECK(r->len == n);
        CHECK(r->nr_contexts == 7);
        REQUIRE(r->formats.size() == std::min<std::size_t>(slots, n));
        for (std::size_t i = 0; i < r->formats.size(); ++i)
            CHECK(std::memcmp(&r->formats[i], &offered[i], slot) == 0);
        // The wire bytes: le32 len at 0, le32 nr_contexts at 4, entry i at 8 + 68 i.
        CHECK(buf[0] == n);
        CHECK(buf[4] == 7);
        if (slots > 0) CHECK(buf[head] == sharing::model_arm);
    }
    std::vector<std::uint8_t> tiny(head - 1, 0xa5);
    CHECK(sharing::write_probe_table(offered, 7, tiny) == 0);
    CHECK(tiny[0] == 0xa5);
    auto short_reply = sharing::parse_probe_table(tiny);
    REQUIRE(!short_reply);
    CHECK(short_reply.why().code == virtio::status::ioerr);
}

TEST_CASE("sharing: format descriptors encode and decode at the registry's offsets", "[sharing]") {
    sharing::format_caps c;
    c.model = 2;
    c.variant = 1;
    c.sizes = 0x30;
    c.max_ias = 56;
    c.max_oas = 46;
    c.tag_bits = 16;
    c.flags = sharing::cap_dirty | sharing::cap_snoop;
    c.pgsize_bitmap = 0x40201000;
    const auto f = sharing::encode_format(c);
    const auto* raw = reinterpret_cast<const std::uint8_t*>(&f);
    const std::uint8_t want[24] = {2, 0, 0, 0, 1, 0, 0, 0, 0x30, 0, 0, 0, 56, 46, 16, 6, 0x00, 0x10, 0x20, 0x40, 0, 0, 0, 0};
    CHECK(std::equal(want, want + 24, raw));
    CHECK(std::all_of(raw + 24, raw + sizeof f, [](std::uint8_t b) { return b == 0; }));
    auto back = sharing::decode_format(f);
    REQUIRE(back);
    CHECK(*back == c);

    auto zero = sharing::decode_format(virtio::pg_format{});
    REQUIRE(!zero);
    CHECK(zero.why().code == virtio::status::inval);
    CHECK(zero.why().field == "model");
    auto reserved = f;
    reserved.format[63] = 1;
    auto r = sharing::decode_format(reserved);
    REQUIRE(!r);
    CHECK(r.why().code == virtio::status::inval);
    CHECK(r.why().field == "format.reserved");
}

// ------------------------------------------------------------------------ rapidcheck

namespace {

/// A random valid configuration of F: every field the format has, within its valid values
/// (formats without a generator here fall back to their sample configurations).
template <class F>
typename F::config random_config() {
    typename F::config c{};
    if constexpr (is_lpae_s1<F>::value) {
        c.ias = *rc::gen::inRange(32u, F::max_ias + 1);
        std::vector<unsigned> oas{32, 36, 40, 42, 44, 48};
        if (F::granule_lg2 == 16) oas.push_back(52);
        c.oas = *rc::gen::elementOf(oas);
        c.coherent_walk = *rc::gen::arbitrary<bool>();
        if (*rc::gen::arbitrary<bool>()) c.quirks |= lpae_quirk::hd;
        if (!c.coherent_walk && *rc::gen::arbitrary<bool>()) c.quirks |= lpae_quirk::outer_wbwa;
        if (*rc::gen::inRange(0, 8) == 0) c.quirks |= lpae_quirk::ns;
    } else if constexpr (std::is_same_v<F, arm_v7s>) {
        c.ias = *rc::gen::arbitrary<bool>() ? 32u : *rc::gen::inRange(24u, 33u);
        const bool mtk = *rc::gen::inRange(0, 8) == 0;
        c.oas = *rc::gen::inRange(24u, mtk ? 35u : 33u);
        c.coherent_walk = *rc::gen::arbitrary<bool>();
        if (mtk) c.quirks |= v7s_quirk::mtk_ext | v7s_quirk::no_perms;
        else if (*rc::gen::inRange(0, 8) == 0) c.quirks |= v7s_quirk::no_perms;
        if (*rc::gen::inRange(0, 8) == 0) c.quirks |= v7s_quirk::ns;
    } else if constexpr (std::is_same_v<F, vtd_fl>) {
        c.levels = *rc::gen::element(4u, 5u);
        c.oas = *rc::gen::inRange(vtd_fl::min_oas, vtd_fl::max_oas + 1);
        c.allow_1g = *rc::gen::arbitrary<bool>();
        c.track_dirty = *rc::gen::arbitrary<bool>();
    } else {
        c = *rc::gen::elementOf(F::sample_configs());
    }
    RC_ASSERT(F::make_geometry(c).ok());
    return c;
}

template <class F, class Device>
void random_round_trip(const Device& device) {
    const auto cfg = random_config<F>();
    placement where;
    // RAM 64 KiB aligned, below 4 GiB (v7s tables hold 32-bit addresses) and below 2^OAS
    // (tables are where the walker's output addresses reach); tables from a random
    // 64-byte-aligned point of its first half.
    where.ram_size = 4ull << 20;
    const std::uint64_t reach = std::uint64_t{1} << std::min(32u, F::make_geometry(cfg)->oas);
    where.ram_base = *rc::gen::inRange<std::uint64_t>(0, (reach - where.ram_size) / (64 << 10) + 1) * (64 << 10);
    where.pool_offset = *rc::gen::inRange<std::uint64_t>(0, where.ram_size / 2 / 64) * 64;
    where.tag = *rc::gen::inRange<std::uint32_t>(0, 1u << 16);
    const std::string problem = round_trip_problem<F>(device, cfg, where);
    RC_LOG() << describe(*F::make_geometry(cfg)) << " RAM 0x" << std::hex << where.ram_base << " pool +0x"
             << where.pool_offset << " tag 0x" << where.tag << "\n";
    RC_ASSERT(problem == "");
    if (!expressible<F>(cfg)) return;
    bool picked = false;
    sharing::pick_format(hana::make_tuple(sharing::guest_format<F>{cfg}), sharing::offered_formats(device),
                         [&](auto g) { picked = g.want == cfg; });
    RC_ASSERT(picked);
}

} // namespace

TEMPLATE_LIST_TEST_CASE("sharing: random configurations round-trip through ATTACH_TABLE", "[sharing][property]",
                        format_list) {
    using F = TestType;
    if constexpr (F::guest_shareable) {
        const auto device = full_device();
        rc::prop(std::string(F::name) + " granule " + std::to_string(1u << F::item_lg2(0)) + " round trip",
                 [&device] { random_round_trip<F>(device); });
    }
}
