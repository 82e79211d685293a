// lockstep-cpp-edge: a C++ edge logger on the lockstep codec's C ABI.
//
// Replays a recorded drive (generic CSV: `timestamp_ms` plus any of the
// catalog's columns, empty cell = not measured) as one vehicle session:
// readings are cut into batches, each batch is spooled and POSTed to
// /api/telemetry until the server acknowledges it.
//
//   lockstep-cpp-edge --server http://127.0.0.1:8001 --vin 5YJ3E1EA000000001 drive.csv
//                     [--batch 60] [--speed X] [--spool DIR] [--seed-wire]
//
// - network errors, 408, 429, 5xx: retried with exponential backoff, or after
//   the server's Retry-After;
// - 409 resync_required: rewind the encoder to the first reading the server
//   lacks (its next_seq, else the batch's first) and re-encode from a keyframe;
//   catalog_mismatch is fatal;
// - other 4xx: the batch is dropped and counted as rejected;
// - --spool DIR: the encoder state and the unacknowledged batch are saved after
//   every cut; a restarted edge sends that batch first and continues the
//   same session exactly where it stopped (the readings' sequence number is
//   their row in the file).
// - --seed-wire: the form loggers send today, one telemetry.TelemetryReading
//   per POST with the seed predictor (speed, battery, power, heading only).
//
// Prints a summary in the form of `lockstep-edge` on stdout, logs on stderr.
#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lockstep.hpp"

using Clock = std::chrono::steady_clock;

// ----------------------------------------------------------------- input

struct Drive {
    size_t channels = 0;
    std::vector<LockstepReading> readings;  // values point into `values`
    std::vector<double> values;
};

static std::vector<std::string> split(const std::string &line) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) {
        cell.erase(0, cell.find_first_not_of(" \t\r"));
        cell.erase(cell.find_last_not_of(" \t\r") + 1);
        cells.push_back(cell);
    }
    return cells;
}

static Drive read_csv(const std::string &path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::string line;
    std::getline(in, line);
    // Column -> channel, from the catalog itself (never a second list of names).
    Drive d;
    d.channels = lockstep_channel_count();
    const std::vector<std::string> header = split(line);
    std::vector<int> channel_of(header.size(), -1);
    int ts_col = -1;
    for (size_t c = 0; c < header.size(); c++) {
        if (header[c] == "timestamp_ms") ts_col = int(c);
        for (size_t ch = 0; ch < d.channels; ch++)
            if (header[c] == lockstep_channel_name(ch)) channel_of[c] = int(ch);
    }
    if (ts_col < 0) throw std::runtime_error(path + ": no timestamp_ms column");
    std::vector<std::pair<int64_t, uint64_t>> rows;
    while (std::getline(in, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::vector<std::string> cells = split(line);
        if (size_t(ts_col) >= cells.size()) throw std::runtime_error(path + ": a row without timestamp_ms");
        uint64_t present = 0;
        const size_t base = d.values.size();
        d.values.resize(base + d.channels, 0.0);
        for (size_t c = 0; c < cells.size() && c < header.size(); c++) {
            if (channel_of[c] < 0 || cells[c].empty()) continue;
            d.values[base + channel_of[c]] = std::stod(cells[c]);
            present |= uint64_t(1) << channel_of[c];
        }
        rows.emplace_back(std::stoll(cells[ts_col]), present);
    }
    for (size_t i = 0; i < rows.size(); i++)
        d.readings.push_back({rows[i].first, rows[i].second, &d.values[i * d.channels]});
    return d;
}

// ----------------------------------------------------------------- HTTP

struct Reply {
    long status = 0;  // 0 = no answer (network error, timeout)
    std::string error;
    nlohmann::json body;
    long retry_after_s = -1;
};

static size_t collect(char *p, size_t size, size_t n, void *out) {
    static_cast<std::string *>(out)->append(p, size * n);
    return size * n;
}

static Reply post(CURL *curl, const std::string &url, const char *content_type, const std::vector<uint8_t> &body) {
    std::string text;
    curl_slist *headers = curl_slist_append(nullptr, (std::string("Content-Type: ") + content_type).c_str());
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, long(body.size()));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &text);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
    Reply r;
    const CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
        r.error = curl_easy_strerror(rc);
        return r;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
    curl_off_t after = -1;
    if (curl_easy_getinfo(curl, CURLINFO_RETRY_AFTER, &after) == CURLE_OK && after >= 0) r.retry_after_s = long(after);
    r.body = nlohmann::json::parse(text, nullptr, false);
    r.error = r.body.is_object() && r.body.contains("error") ? r.body["error"].get<std::string>() : text.substr(0, 200);
    return r;
}

struct Stats {
    uint64_t readings = 0, fields = 0, transmitted = 0, acked = 0, readings_acked = 0, bytes_acked = 0,
             bytes_posted = 0, retries = 0, resyncs = 0, duplicates = 0, rejected = 0;
};

// Posts one body until the server gives a final answer: network errors, 408,
// 429 and 5xx are retried after the server's Retry-After (seconds) or an
// exponential backoff with jitter (250 ms .. 30 s). Returns 2xx, 409 or another 4xx.
struct Sender {
    CURL *curl = curl_easy_init();
    std::string url;
    std::mt19937_64 rng{std::random_device{}()};
    int failures = 0;

    ~Sender() { curl_easy_cleanup(curl); }

    double backoff_ms() {
        const double cap = std::min(30000.0, 250.0 * std::pow(2.0, std::min(failures - 1, 7)));
        return std::uniform_real_distribution<double>(cap / 2, cap)(rng);
    }
    static void sleep_ms(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }

    Reply deliver(const char *content_type, const std::vector<uint8_t> &body, Stats &st) {
        while (true) {
            st.bytes_posted += body.size();
            Reply r = post(curl, url, content_type, body);
            if (r.status != 0 && r.status != 408 && r.status != 429 && r.status < 500) {
                if (r.status < 300) failures = 0;
                return r;
            }
            st.retries++;
            failures++;
            const double ms = r.retry_after_s >= 0 ? double(r.retry_after_s) * 1000.0 : backoff_ms();
            std::cerr << "The server did not take a request ("
                      << (r.status ? "HTTP " + std::to_string(r.status) + ": " : "") << r.error << "); retrying in "
                      << long(ms) << " ms.\n";
            sleep_ms(ms);
        }
    }
};

// ----------------------------------------------------------------- spool

// One file: the encoder state after the last cut and the batch not yet
// acknowledged. Written to a temporary file and renamed, so a kill leaves the
// old or the new version, never half of one.
struct Batch {
    std::vector<uint8_t> body;
    LockstepBatchInfo info{};
};

static void put_bytes(std::ofstream &o, const std::vector<uint8_t> &b) {
    const uint64_t n = b.size();
    o.write(reinterpret_cast<const char *>(&n), 8);
    o.write(reinterpret_cast<const char *>(b.data()), std::streamsize(n));
}

static bool get_bytes(std::ifstream &in, std::vector<uint8_t> &b) {
    uint64_t n = 0;
    if (!in.read(reinterpret_cast<char *>(&n), 8) || n > (64u << 20)) return false;
    b.resize(n);
    return bool(in.read(reinterpret_cast<char *>(b.data()), std::streamsize(n)));
}

static void spool_write(const std::string &dir, LockstepEncoder *enc, const std::optional<Batch> &batch) {
    if (dir.empty()) return;
    const std::string path = dir + "/edge.spool", tmp = path + ".tmp";
    {
        std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
        o.write("LSP1", 4);
        put_bytes(o, lockstep::save(enc));
        put_bytes(o, batch ? batch->body : std::vector<uint8_t>{});
        const uint64_t first = batch ? batch->info.first_seq : 0, count = batch ? batch->info.count : 0;
        o.write(reinterpret_cast<const char *>(&first), 8);
        o.write(reinterpret_cast<const char *>(&count), 8);
        if (!o) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp);
}

static bool spool_read(const std::string &dir, lockstep::Encoder &enc, std::optional<Batch> &batch) {
    std::ifstream in(dir + "/edge.spool", std::ios::binary);
    if (dir.empty() || !in) return false;
    char magic[4];
    std::vector<uint8_t> state;
    Batch b;
    uint64_t first = 0, count = 0;
    if (!in.read(magic, 4) || std::memcmp(magic, "LSP1", 4) != 0 || !get_bytes(in, state) || !get_bytes(in, b.body) ||
        !in.read(reinterpret_cast<char *>(&first), 8) || !in.read(reinterpret_cast<char *>(&count), 8))
        throw std::runtime_error(dir + "/edge.spool is not a lockstep-cpp-edge spool");
    enc = lockstep::restore(state);
    b.info = {first, uint32_t(count)};
    if (!b.body.empty()) batch = b;
    return true;
}

// ----------------------------------------------------------------- edge

struct Options {
    std::string server = "http://127.0.0.1:8001", vin, file, spool;
    size_t batch = 60;
    double speed = 0;  // 0 = as fast as the server acknowledges
    bool seed_wire = false;
};

static Options parse_args(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--server") o.server = value();
        else if (a == "--vin") o.vin = value();
        else if (a == "--batch") o.batch = std::stoul(value());
        else if (a == "--speed") o.speed = std::stod(value());
        else if (a == "--spool") o.spool = value();
        else if (a == "--seed-wire") o.seed_wire = true;
        else if (!a.empty() && a[0] == '-') throw std::runtime_error("unknown option " + a);
        else o.file = a;
    }
    if (o.vin.empty() || o.file.empty() || o.batch == 0)
        throw std::runtime_error(
            "usage: lockstep-cpp-edge --vin VIN [--server URL] [--batch N] [--speed X] [--spool DIR] [--seed-wire] FILE.csv");
    return o;
}

static uint64_t random_session_id() {
    std::random_device rd;
    uint64_t id = 0;
    while (id == 0) id = (uint64_t(rd()) << 32) | rd();
    return id;
}

// Encodes readings [from, to) of the drive as one batch. Frames are counted
// only the first time a reading is encoded (a resync re-encodes).
static Batch encode(LockstepEncoder *enc, const Drive &d, size_t from, size_t to, Stats *first_time) {
    std::vector<LockstepFrame> frames(to - from);
    lockstep::check(lockstep_encoder_push_window(enc, &d.readings[from], to - from, to - from, frames.data()),
                    "lockstep_encoder_push_window");
    Batch b;
    b.body = lockstep::cut(enc, &b.info);
    if (first_time)
        for (const LockstepFrame &f : frames) {
            first_time->readings++;
            first_time->transmitted += uint64_t(__builtin_popcountll(f.transmitted));
        }
    return b;
}

// Sleeps until the reading at `ts` is due: `speed` times faster than recorded,
// counted from the first reading this run sends (0 = no pacing).
struct Pace {
    Clock::time_point start = Clock::now();
    int64_t first_ts = 0;
    double speed = 0;
    void wait(int64_t ts) const {
        if (speed > 0)
            std::this_thread::sleep_until(start + std::chrono::duration<double>(double(ts - first_ts) / 1000.0 / speed));
    }
};

// The seed wire form: each reading encoded with the seed predictor and posted
// alone, retried until acknowledged. No sequence numbers, so no spool or resync.
static void run_seed(const Options &opt, const Drive &d, Sender &http, const Pace &pace, Stats &st) {
    LockstepSeedPredictor *pred = lockstep_seed_new();
    std::vector<uint8_t> body(256);
    for (const LockstepReading &r : d.readings) {
        pace.wait(r.timestamp_ms);
        size_t len = 0;
        uint8_t sent = 0;
        // Speed, battery, power, heading are channels 0..3 of the catalog, the seed form's order.
        lockstep::check(lockstep_seed_encode(pred, opt.vin.c_str(), r.timestamp_ms, r.values, uint8_t(r.present & 0xF),
                                             nullptr, body.data(), body.size(), &len, &sent),
                        "lockstep_seed_encode");
        st.readings++;
        st.transmitted += uint64_t(__builtin_popcount(sent));
        const std::vector<uint8_t> b(body.begin(), body.begin() + long(len));
        const Reply reply = http.deliver(lockstep_seed_content_type(), b, st);
        if (reply.status >= 300) {
            std::cerr << "The server refused a seed reading for good (HTTP " << reply.status << ": " << reply.error
                      << "); skipped.\n";
            st.rejected++;
            continue;
        }
        st.duplicates += reply.body.is_object() && reply.body.value("duplicate", false);
        st.acked++;
        st.readings_acked++;
        st.bytes_acked += b.size();
    }
    lockstep_seed_free(pred);
}

int main(int argc, char **argv) try {
    const Options opt = parse_args(argc, argv);
    const auto started = Clock::now();
    const Drive drive = read_csv(opt.file);
    Sender http;
    http.url = opt.server + "/api/telemetry";
    Stats st;

    lockstep::Encoder enc;
    std::optional<Batch> batch;  // cut, not yet acknowledged
    const bool resumed = !opt.seed_wire && spool_read(opt.spool, enc, batch);
    if (!resumed) enc = lockstep::open(opt.vin, random_session_id());
    // A reading's sequence number is its row: the session started at row 0.
    size_t next_row = size_t(lockstep_encoder_next_seq(enc.get()));
    if (resumed)
        std::cerr << "Resuming session " << std::hex << lockstep_encoder_session_id(enc.get()) << std::dec
                  << " from the spool at row " << next_row << (batch ? ", one batch to send first" : "") << ".\n";
    Pace pace;
    pace.speed = opt.speed;
    if (next_row < drive.readings.size()) pace.first_ts = drive.readings[next_row].timestamp_ms;

    int resyncs_in_a_row = 0;
    while (!opt.seed_wire) {
        if (!batch) {
            if (next_row >= drive.readings.size()) break;
            const size_t to = std::min(drive.readings.size(), next_row + opt.batch);
            pace.wait(drive.readings[to - 1].timestamp_ms);  // the batch is cut when its last reading is due
            batch.emplace(encode(enc.get(), drive, next_row, to, &st));
            next_row = to;
            spool_write(opt.spool, enc.get(), batch);  // spooled before it is posted
        }
        const Reply r = http.deliver(lockstep_batch_content_type(), batch->body, st);
        if (r.status < 300) {
            st.duplicates += r.body.is_object() && r.body.value("duplicate", false);
            st.acked++;
            st.readings_acked += batch->info.count;
            st.bytes_acked += batch->body.size();
            batch.reset();
            resyncs_in_a_row = 0;
            continue;
        }
        if (r.status == 409 && r.body.is_object() && r.body.value("resync_required", false)) {
            const std::string kind = r.body.value("kind", "unknown");
            if (kind == "catalog_mismatch")
                throw std::runtime_error("the server uses another signal catalog: " + r.error);
            const uint64_t first = batch->info.first_seq, end = first + batch->info.count;
            uint64_t from = first;
            if (r.body.contains("next_seq") && r.body["next_seq"].is_number_unsigned()) {
                const uint64_t n = r.body["next_seq"].get<uint64_t>();
                if (n > first && n <= end) from = n;  // the server already has [first, n)
            }
            st.resyncs++;
            st.readings_acked += from - first;
            std::cerr << "The server asked for a resync (" << kind << "); re-sending from seq " << from
                      << " with a keyframe.\n";
            lockstep::check(lockstep_encoder_rewind(enc.get(), from), "lockstep_encoder_rewind");
            batch.reset();
            if (from < end) batch.emplace(encode(enc.get(), drive, size_t(from), size_t(end), nullptr));
            spool_write(opt.spool, enc.get(), batch);
            // A server that keeps asking for resyncs is not hammered.
            if (++resyncs_in_a_row > 2) {
                http.failures++;
                Sender::sleep_ms(http.backoff_ms());
            }
            continue;
        }
        std::cerr << "The server refused a batch for good (HTTP " << r.status << ": " << r.error << "); dropped.\n";
        st.rejected++;
        batch.reset();
    }
    if (opt.seed_wire) run_seed(opt, drive, http, pace, st);
    if (!opt.spool.empty() && !opt.seed_wire) std::remove((opt.spool + "/edge.spool").c_str());

    // The summary, in lockstep-edge's words.
    const double secs = std::chrono::duration<double>(Clock::now() - started).count();
    uint64_t fields = 0;  // measured values among the readings encoded by this run
    const size_t first_row = drive.readings.size() - size_t(st.readings);
    for (size_t i = first_row; i < drive.readings.size(); i++)
        fields += uint64_t(__builtin_popcountll(drive.readings[i].present));
    std::printf("lockstep-edge summary (%s, %.1f s):\n", opt.seed_wire ? "seed wire form" : "lockstep batches", secs);
    std::printf("  vehicles: 1\n");
    std::printf("  readings: %llu produced, %llu acknowledged\n", (unsigned long long)st.readings,
                (unsigned long long)st.readings_acked);
    std::printf("  fields: %llu non-null, %llu transmitted, %.1f %% skipped\n", (unsigned long long)fields,
                (unsigned long long)st.transmitted, fields ? 100.0 * (1.0 - double(st.transmitted) / double(fields)) : 0.0);
    std::printf("  sent: %llu requests acknowledged, %llu body bytes (%.2f bytes/reading); %llu bytes posted incl. retries\n",
                (unsigned long long)st.acked, (unsigned long long)st.bytes_acked,
                st.readings_acked ? double(st.bytes_acked) / double(st.readings_acked) : 0.0,
                (unsigned long long)st.bytes_posted);
    std::printf("  retries: %llu, resyncs: %llu, duplicates acknowledged: %llu, rejected: %llu\n",
                (unsigned long long)st.retries, (unsigned long long)st.resyncs, (unsigned long long)st.duplicates,
                (unsigned long long)st.rejected);
    if (resumed) std::printf("  resumed %s after %zu readings already spooled by an earlier run\n", opt.file.c_str(), first_row);
    std::printf("  spool: 0 batch(es) left in %s\n", opt.spool.empty() ? "(no spool)" : opt.spool.c_str());
    return 0;
} catch (const std::exception &e) {
    std::cerr << "lockstep-cpp-edge: " << e.what() << "\n";
    return 1;
}
