// Runs every conformance vector under a directory (default: the codec's
// conformance/ folder, every protocol version in it) through the C ABI and
// checks that C++ reproduces the encoded bytes and the reconstructed values
// exactly. Exit status 0 only if every vector passes and there was one.
//
//   lockstep-cpp-conformance crates/lockstep-codec/conformance
//
// lockstep-*.json: readings -> batches (byte for byte) and frames (= what the
//   cloud decodes, double for double), final state checksum; run twice: with
//   one encoder, and with the encoder saved and restored after every batch.
// seed-*.json: bodies -> reconstructed values (cloud side), and the same
//   bodies re-encoded from those values (edge side).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lockstep.hpp"

using nlohmann::json;
namespace fs = std::filesystem;

static std::string hex(const std::vector<uint8_t> &b) {
    static const char *d = "0123456789abcdef";
    std::string s;
    for (uint8_t x : b) s += {d[x >> 4], d[x & 15]};
    return s;
}

static std::vector<uint8_t> unhex(const std::string &s) {
    std::vector<uint8_t> b;
    for (size_t i = 0; i + 1 < s.size(); i += 2) b.push_back(uint8_t(std::stoul(s.substr(i, 2), nullptr, 16)));
    return b;
}

static std::string hex_u64(uint64_t v, int width) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%0*llx", width, static_cast<unsigned long long>(v));
    return buf;
}

// A value the vector expects (JSON number or null) against one we computed (NaN = null).
static bool same_value(const json &want, double got) {
    if (want.is_null()) return std::isnan(got);
    return !std::isnan(got) && want.get<double>() == got;
}

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

static void expect(bool ok, const std::string &what) {
    if (!ok) throw Failure(what);
}

// Encodes the vector's input; `restart` saves and restores the encoder after every batch.
static void run_lockstep(const json &v, bool restart) {
    expect(v["catalog_text"].get<std::string>() == lockstep_catalog_text(), "catalog text differs");
    expect(v["catalog_hash"].get<std::string>() == hex_u64(lockstep_catalog_hash(), 16), "catalog hash differs");
    const size_t channels = lockstep_channel_count();
    LockstepEncoderConfig config = lockstep_encoder_config_default();
    config.keyframe_interval_ms = v["keyframe_interval_ms"].get<int64_t>();
    config.checksum = true;
    lockstep::Encoder enc = lockstep::open(v["vin"].get<std::string>(),
                                           std::stoull(v["session_id"].get<std::string>(), nullptr, 16), &config);

    const json &input = v["input"];
    const size_t n = input.size();
    std::vector<double> values(n * channels, 0.0);
    std::vector<LockstepReading> readings(n);
    for (size_t i = 0; i < n; i++) {
        const json &vals = input[i]["values"];
        expect(vals.size() == channels, "a reading has the wrong number of values");
        readings[i] = {input[i]["timestamp_ms"].get<int64_t>(), 0, &values[i * channels]};
        for (size_t c = 0; c < channels; c++) {
            if (vals[c].is_null()) continue;
            values[i * channels + c] = vals[c].get<double>();
            readings[i].present |= uint64_t(1) << c;
        }
    }

    const size_t batch_size = v["batch_size"].get<size_t>();
    const bool lookahead = v["lookahead"].get<bool>();
    std::vector<LockstepFrame> frames(n);
    std::vector<std::string> batches;
    auto cut = [&] {
        // Both ways of cutting: a caller buffer (too small at first, on purpose) and a library buffer.
        LockstepBatchInfo info{};
        if (batches.size() % 2 == 0) {
            batches.push_back(hex(lockstep::cut(enc.get(), &info, 16)));
        } else {
            LockstepBuffer buf{nullptr, 0};
            lockstep::check(lockstep_encoder_cut_alloc(enc.get(), &buf, &info), "lockstep_encoder_cut_alloc");
            batches.push_back(hex(std::vector<uint8_t>(buf.data, buf.data + buf.len)));
            lockstep_buffer_free(&buf);
        }
        expect(info.count > 0, "a cut with pending readings reported no batch");
        if (restart) enc = lockstep::restore(lockstep::save(enc.get()));
    };
    for (size_t i = 0; i < n; i++) {
        if (lookahead)
            lockstep::check(lockstep_encoder_push_window(enc.get(), &readings[i], 1, n - i, &frames[i]), "push_window");
        else
            lockstep::check(lockstep_encoder_push(enc.get(), &readings[i], &frames[i]), "lockstep_encoder_push");
        if (lockstep_encoder_pending(enc.get()) == batch_size) cut();
    }
    if (lockstep_encoder_pending(enc.get()) > 0) cut();

    const json &want_batches = v["batches"];
    expect(batches.size() == want_batches.size(),
           "batch count " + std::to_string(batches.size()) + ", want " + std::to_string(want_batches.size()));
    for (size_t k = 0; k < batches.size(); k++)
        expect(batches[k] == want_batches[k].get<std::string>(), "batch " + std::to_string(k) + " bytes differ");

    const json &decoded = v["decoded"];
    expect(decoded.size() == n, "decoded count differs from the input");
    for (size_t i = 0; i < n; i++) {
        const json &d = decoded[i];
        const LockstepFrame &f = frames[i];
        const std::string at = "reading " + std::to_string(i) + ": ";
        expect(f.seq == d["seq"].get<uint64_t>(), at + "seq");
        expect(f.timestamp_ms == d["timestamp_ms"].get<int64_t>(), at + "timestamp");
        expect(f.keyframe == d["keyframe"].get<bool>(), at + "keyframe");
        expect(f.transmitted == d["transmitted"].get<uint64_t>(), at + "transmitted mask");
        for (size_t c = 0; c < channels; c++)
            expect(same_value(d["values"][c], f.values[c]),
                   at + "channel " + std::to_string(c) + " reconstructs to " + std::to_string(f.values[c]));
    }
    expect(hex_u64(lockstep_encoder_state_checksum(enc.get()), 8) == v["final_state_checksum"].get<std::string>(),
           "final state checksum differs");
}

static void run_seed(const json &v) {
    const json &bodies = v["bodies"];
    const json &want = v["reconstructed"];
    expect(bodies.size() == want.size() && !bodies.empty(), "bodies and reconstructed differ in length");
    LockstepSeedPredictor *cloud = lockstep_seed_new();
    LockstepSeedPredictor *edge = lockstep_seed_new();
    try {
        for (size_t i = 0; i < bodies.size(); i++) {
            const std::vector<uint8_t> body = unhex(bodies[i].get<std::string>());
            const std::string at = "body " + std::to_string(i) + ": ";
            double rec[LOCKSTEP_SEED_FIELDS];
            uint8_t transmitted = 0;
            int64_t ts = 0;
            lockstep::check(lockstep_seed_reconstruct(cloud, body.data(), body.size(), rec, &transmitted, &ts),
                            "lockstep_seed_reconstruct");
            for (size_t f = 0; f < LOCKSTEP_SEED_FIELDS; f++)
                expect(same_value(want[i][f], rec[f]), at + "field " + std::to_string(f) + " reconstructs differently");
            // Edge side. A field the edge left out was predicted, so feeding the
            // reconstructed values back (the sent value, or the prediction) makes
            // an edge in the same state send exactly the same fields.
            expect(body.size() > 19 && body[0] == 0x0a && body[1] == 17, at + "no 17-character vehicle_vin first");
            const std::string vin(body.begin() + 2, body.begin() + 19);
            uint8_t present = 0;
            for (size_t f = 0; f < LOCKSTEP_SEED_FIELDS; f++)
                if (!std::isnan(rec[f])) present |= uint8_t(1u << f);
            const std::vector<uint8_t> again = lockstep::into_buffer(
                [&](uint8_t *b, size_t cap, size_t *len) {
                    return lockstep_seed_encode(edge, vin.c_str(), ts, rec, present, nullptr, b, cap, len, nullptr);
                },
                "lockstep_seed_encode", 8);
            expect(again == body, at + "the edge encodes different bytes");
        }
        double a[LOCKSTEP_SEED_FIELDS], b[LOCKSTEP_SEED_FIELDS];
        lockstep::check(lockstep_seed_save(edge, a), "lockstep_seed_save");
        lockstep::check(lockstep_seed_save(cloud, b), "lockstep_seed_save");
        expect(std::equal(a, a + 4, b, [](double x, double y) { return x == y || (std::isnan(x) && std::isnan(y)); }),
               "edge and cloud seed states differ at the end");
    } catch (...) {
        lockstep_seed_free(cloud);
        lockstep_seed_free(edge);
        throw;
    }
    lockstep_seed_free(cloud);
    lockstep_seed_free(edge);
}

int main(int argc, char **argv) {
    const fs::path root = argc > 1 ? argv[1] : "crates/lockstep-codec/conformance";
    std::vector<fs::path> files;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
        if (it->path().extension() == ".json") files.push_back(it->path());
    if (ec) {
        std::cerr << "cannot read " << root << ": " << ec.message() << "\n";
        return 2;
    }
    std::sort(files.begin(), files.end());
    std::cout << lockstep_version() << ", catalog " << hex_u64(lockstep_catalog_hash(), 16) << "\n";
    int passed = 0, failed = 0;
    for (const fs::path &p : files) {
        const std::string name = p.filename().string();
        const bool is_lockstep = name.rfind("lockstep-", 0) == 0, is_seed = name.rfind("seed-", 0) == 0;
        if (!is_lockstep && !is_seed) continue;
        try {
            std::ifstream in(p);
            const json v = json::parse(in);
            if (is_lockstep) {
                run_lockstep(v, false);
                run_lockstep(v, true);
                std::cout << "ok   " << p.string() << ": " << v["batches"].size() << " batches, "
                          << v["input"].size() << " readings, bytes and values identical (also across save/restore)\n";
            } else {
                run_seed(v);
                std::cout << "ok   " << p.string() << ": " << v["bodies"].size()
                          << " seed bodies reconstructed and re-encoded identically\n";
            }
            passed++;
        } catch (const std::exception &e) {
            std::cout << "FAIL " << p.string() << ": " << e.what() << "\n";
            failed++;
        }
    }
    std::cout << passed << " vectors passed, " << failed << " failed\n";
    if (passed == 0) std::cout << "FAIL: no conformance vectors under " << root.string() << "\n";
    return failed == 0 && passed > 0 ? 0 : 1;
}
