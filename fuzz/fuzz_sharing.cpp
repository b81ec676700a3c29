// SPDX-License-Identifier: MIT
/// @file fuzz_sharing.cpp
/// libFuzzer target `fuzz_sharing`: arbitrary bytes as the page-table-sharing requests of
/// formats/README.md, decoded by the device and driver sides of sharing/negotiation.hpp and
/// sharing/invalidate.hpp:
///
/// - a PROBE_TABLE device-writable reply, parsed as a driver does (parse_probe_table), every
///   entry decoded (decode_format), and pick_format run over it for a guest implementing every
///   format of `all_formats`;
/// - an ATTACH_TABLE request, validated (validate_attach) by a device walking every format of
///   `all_formats` (up to its largest sample configuration; some switched off, tag bits and the
///   context limit from the input) over a small guest RAM filled with the input; when accepted,
///   a few addresses translated through the binding for a few contexts (also through an engine
///   borrowed with with_table);
/// - an INVALIDATE request, decoded (decode_invalidate) against that binding.
///
/// Nothing may crash, read out of bounds (guest RAM is one heap buffer under ASan) or loop, and
/// the answers must be consistent: refusals carry the statuses the layer documents, an accepted
/// descriptor or config re-encodes to the same bytes, a binding describes the request, walks read
/// at most `levels` entries, an accepted INVALIDATE range lies inside the input address size.
///
/// Input, front to back (reads past the end give zero):
///
/// | bytes | meaning |
/// |---|---|
/// | 2 | PROBE_TABLE reply length L (mod 300) |
/// | L | the reply: le32 len, le32 nr_contexts, pg_format[] (68 bytes each) |
/// | 92 | ATTACH_TABLE, device-readable part (head … config) |
/// | 1 | table: 0 as given, 1 RAM base + (table mod RAM size), 2 the same 4 KiB aligned |
/// | 1 | guest RAM size: 16 KiB << (byte mod 6) |
/// | 1 (+4) | guest RAM base: 0 1 GiB, 1 u32 << 12, 2 zero |
/// | 1 | device tag bits (mod 33) |
/// | 2 | device formats switched off (bit i: the i-th of all_formats) |
/// | 1 | device's most contexts (max_contexts) |
/// | 1 + 8n | n (mod 9) addresses to translate |
/// | 4 | one more context to try (besides 0, 1, last, one past the last) |
/// | 96 | INVALIDATE, device-readable part (head … opaque) |
/// | rest | guest RAM contents, repeated over all of it |
#include <cinttypes>
#include <cstdlib>
#include <string>
#include <cstring>
#include <tuple>
#include <vector>

#include <boost/hana/for_each.hpp>
#include <boost/hana/transform.hpp>
#include <boost/hana/tuple.hpp>

#include <iopgtable/formats/all.hpp>
#include <iopgtable/mem/guest_ram.hpp>
#include <iopgtable/sharing/invalidate.hpp>
#include <iopgtable/sharing/negotiation.hpp>

#include "fuzz_support.hpp"

namespace iopgtable::fuzz {
namespace {

namespace hana = boost::hana;
using virtio::status;

const auto base_device = hana::transform(all_formats, [](auto t) {
    using F = typename decltype(t)::type;
    return sharing::device_format<F>{sharing::widest_sample<F>(), 16};
});

/// A guest implementing every format of the list, each wanting its first sample configuration.
const auto every_guest_format = hana::transform(all_formats, [](auto t) {
    using F = typename decltype(t)::type;
    return sharing::guest_format<F>{F::sample_configs().front()};
});

/// IOPGTABLE_FUZZ_TRACE=1: say on stderr what each part decided (to check seeds).
const bool trace = std::getenv("IOPGTABLE_FUZZ_TRACE") != nullptr;

bool refusal_status(status s, std::initializer_list<status> allowed) {
    for (status a : allowed)
        if (s == a) return true;
    return false;
}

void probe_part(std::span<const std::uint8_t> reply) {
    auto parsed = sharing::parse_probe_table(reply);
    if (reply.size() < sizeof(virtio::probe_table_reply)) {
        FUZZ_CHECK(!parsed && parsed.why().code == status::ioerr, "a %zu-byte reply was parsed", reply.size());
        return;
    }
    FUZZ_CHECK(parsed.ok(), "a reply of %zu bytes was refused", reply.size());
    const std::size_t slots = (reply.size() - sizeof(virtio::probe_table_reply)) / sizeof(virtio::pg_format);
    FUZZ_CHECK(parsed->formats.size() <= slots, "%zu formats from %zu slots", parsed->formats.size(), slots);
    le32 len;
    std::memcpy(len.bytes.data(), reply.data(), 4);
    FUZZ_CHECK(parsed->len == len.get(), "len %u, wire %u", parsed->len, len.get());
    for (const auto& f : parsed->formats) {
        FUZZ_CHECK(f.model.get() != 0, "an unused (model 0) slot was kept");
        auto caps = sharing::decode_format(f);
        if (!caps) {
            FUZZ_CHECK(caps.why().code == status::inval, "decode_format refused with status %u",
                       static_cast<unsigned>(caps.why().code));
            continue;
        }
        const auto again = sharing::encode_format(*caps);
        FUZZ_CHECK(std::memcmp(&again, &f, sizeof f) == 0, "an accepted pg_format does not re-encode to its bytes");
    }
    sharing::pick_format(every_guest_format, parsed->formats, [&](auto g) {
        using F = typename decltype(g)::format;
        auto geo = F::make_geometry(g.want);
        FUZZ_CHECK(geo.ok(), "pick_format chose an invalid %s configuration", F::name);
        FUZZ_CHECK(F::guest_shareable, "pick_format chose stage-2 format %s", F::name);
    });
}

template <class Binding>
void translate_part(const Binding& b, guest_ram& ram, std::uint32_t extra_context,
                    const std::vector<std::uint64_t>& addresses) {
    const geometry geo = b.geo();
    const std::uint32_t n = b.nr_contexts();
    const std::uint32_t contexts[5] = {0, 1, n - 1, n, extra_context};
    for (std::uint32_t ctx : contexts) {
        for (std::uint64_t va : addresses) {
            auto t = b.translate(ram, ctx, va);
            if (trace)
                std::fprintf(stderr, "  context %u va %#" PRIx64 ": %s %u\n", ctx, va, t ? "walk" : "refused",
                             t ? static_cast<unsigned>(t->status) : static_cast<unsigned>(t.why().code));
            if (!t) {
                FUZZ_CHECK(refusal_status(t.why().code, {status::range, status::noent, status::fault}),
                           "translate refused with status %u", static_cast<unsigned>(t.why().code));
                FUZZ_CHECK(t.why().code != status::range || ctx >= n, "context %u of %u refused RANGE", ctx, n);
                continue;
            }
            FUZZ_CHECK(ctx < n, "context %u of %u translated", ctx, n);
            FUZZ_CHECK(t->accesses <= geo.levels, "%u entries read in %u levels", t->accesses, geo.levels);
            const bool beyond_ias = beyond(va, geo.ias);
            FUZZ_CHECK((t->status == walk_status::out_of_range) == beyond_ias,
                       "va %#" PRIx64 " ias %u: status %u", va, geo.ias, static_cast<unsigned>(t->status));
            if (t->status == walk_status::mapped)
                FUZZ_CHECK(t->size_lg2 < 64 && ((t->oa.value ^ va) & low_mask(t->size_lg2)) == 0,
                           "va %#" PRIx64 " → %#" PRIx64 ": page offset lost", va, t->oa.value);
        }
        // The same walk through a borrowed engine.
        if (addresses.empty()) continue;
        auto via_engine = b.with_table(ram, ctx, [&](auto& table) {
            using F = typename std::decay_t<decltype(table)>::format;
            return table.iova_to_phys(typename F::input_address{addresses[0]});
        });
        auto direct = b.translate(ram, ctx, addresses[0]);
        if (via_engine && direct) {
            const bool mapped = direct->status == walk_status::mapped;
            FUZZ_CHECK(via_engine->has_value() == mapped, "iova_to_phys and translate disagree on %#" PRIx64,
                       addresses[0]);
            if (mapped) FUZZ_CHECK((*via_engine)->value == direct->oa.value, "output addresses differ");
        }
    }
}

template <class Binding>
void invalidate_part(const Binding& b, const virtio::req_invalidate& req) {
    auto inv = sharing::decode_invalidate(req, b);
    if (trace) std::fprintf(stderr, "invalidate: %s\n", inv ? "accepted" : std::string(inv.why().field).c_str());
    if (!inv) {
        FUZZ_CHECK(refusal_status(inv.why().code, {status::inval, status::range}), "INVALIDATE refused with status %u",
                   static_cast<unsigned>(inv.why().code));
        return;
    }
    FUZZ_CHECK((req.flags.get() & ~virtio::invalidate_kind_mask) == 0, "reserved flag bits accepted");
    switch (inv->kind) {
    case virtio::invalidate_kind::table:
        FUZZ_CHECK(b.indirect(), "TABLE accepted without F_INDIRECT");
        break;
    case virtio::invalidate_kind::single:
        FUZZ_CHECK(inv->context < b.nr_contexts(), "SINGLE of context %u of %u", inv->context, b.nr_contexts());
        break;
    case virtio::invalidate_kind::vaddr:
        FUZZ_CHECK(inv->context < b.nr_contexts(), "VADDR in context %u of %u", inv->context, b.nr_contexts());
        FUZZ_CHECK(inv->first == req.virt_addr.get() && inv->first <= inv->last &&
                       inv->last - inv->first == req.range_size.get() - 1,
                   "range %#" PRIx64 "..%#" PRIx64 " from %#" PRIx64 "+%#" PRIx64, inv->first, inv->last,
                   req.virt_addr.get(), req.range_size.get());
        FUZZ_CHECK(!beyond(inv->last, b.geo().ias), "range ends at %#" PRIx64 " beyond IAS %u", inv->last, b.geo().ias);
        break;
    default:
        FUZZ_CHECK(false, "unknown kind %u accepted", static_cast<unsigned>(inv->kind));
    }
}

void run(const std::uint8_t* data, std::size_t size) {
    byte_reader in(data, size);

    // ---- PROBE_TABLE reply
    const std::size_t reply_len = in.u16() % 300;
    std::vector<std::uint8_t> reply(reply_len);
    for (auto& b : reply) b = in.u8();
    probe_part(reply);

    // ---- ATTACH_TABLE and the device
    virtio::req_attach_table req;
    {
        std::uint8_t raw[offsetof(virtio::req_attach_table, tail)];
        for (auto& b : raw) b = in.u8();
        std::memcpy(&req, raw, sizeof raw);
    }
    const unsigned table_mode = in.u8() % 3;
    const std::uint64_t ram_size = std::uint64_t{16 * 1024} << (in.u8() % 6);
    std::uint64_t ram_base = 0x40000000;
    switch (in.u8() % 3) {
    case 1: ram_base = std::uint64_t{in.u32()} << 12; break;
    case 2: ram_base = 0; break;
    default: break;
    }
    if (table_mode != 0) {
        std::uint64_t t = ram_base + req.table.get() % ram_size;
        if (table_mode == 2) t &= ~std::uint64_t{0xfff};
        req.table = t;
    }
    const auto tag_bits = static_cast<std::uint8_t>(in.u8() % 33);
    const std::uint16_t off_mask = in.u16();
    sharing::attach_limits lim;
    lim.max_contexts = in.u8();
    std::vector<std::uint64_t> addresses(in.u8() % 9);
    for (auto& a : addresses) a = in.u64();
    const std::uint32_t extra_context = in.u32();
    virtio::req_invalidate inv;
    {
        std::uint8_t raw[offsetof(virtio::req_invalidate, tail)];
        for (auto& b : raw) b = in.u8();
        std::memcpy(&inv, raw, sizeof raw);
    }

    guest_ram ram{ram_size, pa_t{ram_base}};
    const auto contents = in.rest();
    if (!contents.empty()) {
        auto bytes = ram.bytes();
        for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(contents[i % contents.size()]);
    }

    auto device = base_device;
    std::size_t index = 0;
    hana::for_each(device, [&](auto& d) {
        d.tag_bits = tag_bits;
        d.enabled = ((off_mask >> index++) & 1) == 0;
    });

    // A config the device reads must re-encode to its bytes.
    if (auto tc = sharing::decode_config(req.model.get(), req.config)) {
        auto again = sharing::encode_config(*tc);
        FUZZ_CHECK(again.ok() && std::memcmp(again->data(), req.config, 64) == 0,
                   "an accepted config does not re-encode to its bytes");
    }

    auto bound = sharing::validate_attach(device, req, ram, lim);
    if (trace) {
        if (bound) std::fprintf(stderr, "attach: bound %s, %u contexts\n", bound->format_name(), bound->nr_contexts());
        else std::fprintf(stderr, "attach: refused %s %.*s\n", std::string(virtio::to_string(bound.why().code)).c_str(),
                          static_cast<int>(bound.why().field.size()), bound.why().field.data());
    }
    if (!bound) {
        FUZZ_CHECK(refusal_status(bound.why().code, {status::inval, status::unsupp, status::range}),
                   "ATTACH_TABLE refused with status %u (%.*s)", static_cast<unsigned>(bound.why().code),
                   static_cast<int>(bound.why().field.size()), bound.why().field.data());
        FUZZ_CHECK(!bound.why().field.empty(), "a refusal without a field");
        return;
    }
    const auto& b = *bound;
    FUZZ_CHECK(b.model() == req.model.get() && b.table() == pa_t{req.table.get()} && b.flags() == req.flags.get(),
               "the binding does not describe the request");
    FUZZ_CHECK((req.flags.get() & ~(virtio::table_f_indirect | virtio::table_f_native)) == 0, "flags %#x accepted",
               req.flags.get());
    FUZZ_CHECK(b.nr_contexts() == (b.indirect() ? req.nr_contexts.get() : 1u) && b.nr_contexts() >= 1 &&
                   (!b.indirect() || b.nr_contexts() <= lim.max_contexts),
               "nr_contexts %u from request %u", b.nr_contexts(), req.nr_contexts.get());
    FUZZ_CHECK(tag_bits >= 32 || (b.tag() >> tag_bits) == 0, "tag %#x with %u tag bits", b.tag(), tag_bits);
    FUZZ_CHECK(ram.contains(b.table(), 8), "table %#" PRIx64 " outside RAM", b.table().value);
    const bool shareable = b.with_engine([](const auto& e) { return std::decay_t<decltype(e)>::format::guest_shareable; });
    FUZZ_CHECK(shareable, "bound to stage-2 format %s", b.format_name());

    translate_part(b, ram, extra_context, addresses);
    invalidate_part(b, inv);
}

} // namespace
} // namespace iopgtable::fuzz

IOPGTABLE_FUZZ_LISTS(iopgtable::fuzz::format_names())

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    iopgtable::fuzz::run(data, size);
    return 0;
}
