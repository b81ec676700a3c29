// SPDX-License-Identifier: MIT
#pragma once
/// @file vectors.hpp
/// Reader of the known-answer files formats/<folder>/vectors.txt (syntax: formats/README.md).
/// A record is a kind word and `key=value` pairs. For each kind a fixed set of keys are the
/// record's inputs and expected outputs; every other key (except `format`) is an option for
/// the format's `accepts` / `config_from`.
#include <cstdint>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <iopgtable/iopgtable.hpp>

#ifndef IOPGTABLE_SOURCE_DIR
#error "IOPGTABLE_SOURCE_DIR (the project's source directory) must be defined"
#endif

namespace iopgtable::test {

/// Input and output keys of each record kind (everything else is an option). `start_level`
/// is the Arm start level of LPAE geometries: an output the generic reader does not check
/// (the LPAE tests do).
inline const std::map<std::string, std::set<std::string>, std::less<>>& vector_kinds() {
    static const std::map<std::string, std::set<std::string>, std::less<>> kinds = {
        {"geom", {"levels", "top_entries", "start_level", "error"}},
        {"leaf", {"size", "oa", "prot", "raw"}},
        {"table", {"pa", "raw", "level"}},
        {"reg", {"root", "name", "value"}},
    };
    return kinds;
}

struct vector_record {
    std::string where;   ///< "file:line" for messages
    std::string text;    ///< the line as written
    std::string kind;
    std::string format;  ///< the `format=` value
    std::map<std::string, std::string, std::less<>> io;  ///< inputs and expected outputs
    options opts;        ///< everything else

    bool has(std::string_view k) const { return io.find(k) != io.end(); }
    /// A number field (hex with 0x, else decimal); fails the test when absent or malformed.
    std::uint64_t number(std::string_view k) const {
        auto it = io.find(k);
        INFO(where << ": " << text);
        REQUIRE(it != io.end());
        options o;
        o.values.emplace(std::string(k), it->second);
        auto v = o.number(k, 0);
        REQUIRE(v.ok());
        return *v;
    }
    const std::string& field(std::string_view k) const {
        auto it = io.find(k);
        INFO(where << ": " << text);
        REQUIRE(it != io.end());
        return it->second;
    }
};

/// Path of formats/<folder>/vectors.txt in the source tree.
inline std::string vectors_path(const char* folder) {
    return std::string(IOPGTABLE_SOURCE_DIR) + "/formats/" + folder + "/vectors.txt";
}

/// Every record of one vector file. Fails the test on an unreadable file, an unknown record
/// kind, a field without `=`, a repeated key or a record without `format=`.
inline std::vector<vector_record> read_vectors(const std::string& path) {
    std::ifstream in(path);
    INFO("vector file " << path);
    REQUIRE(in.good());
    std::vector<vector_record> out;
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
        const std::string text = line.substr(0, line.find('#'));
        std::istringstream words(text);
        vector_record r;
        if (!(words >> r.kind)) continue;  // blank or comment
        r.where = path + ":" + std::to_string(n);
        r.text = line;
        INFO(r.where << ": " << line);
        auto kind = vector_kinds().find(r.kind);
        REQUIRE(kind != vector_kinds().end());  // unknown record kind
        for (std::string w; words >> w;) {
            const auto eq = w.find('=');
            REQUIRE(eq != std::string::npos);
            REQUIRE(eq > 0);
            std::string key = w.substr(0, eq), value = w.substr(eq + 1);
            REQUIRE(!r.io.count(key));
            REQUIRE(!r.opts.has(key));
            if (key == "format") r.format = value;
            else if (kind->second.count(key)) r.io.emplace(std::move(key), std::move(value));
            else r.opts.values.emplace(std::move(key), std::move(value));
        }
        REQUIRE(!r.format.empty());
        out.push_back(std::move(r));
    }
    return out;
}

} // namespace iopgtable::test
