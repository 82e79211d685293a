// Encode throughput through the C ABI, readings per second on one core, on the
// same synthetic drive and in the same loop as `cargo bench -p lockstep-codec`
// (codec/encode: 10,000 readings at 1 Hz, a batch cut every 100 readings).
//
//   lockstep-cpp-bench [SECONDS]   -> one JSON line
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "lockstep.hpp"

constexpr size_t READINGS = 10000, BATCH = 100, CHANNELS = 7;

// The criterion bench's drive(), line for line (xorshift noise, sin/cos in double).
static std::vector<double> drive() {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    auto noise = [&] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return double(x % 1000) / 1000.0 - 0.5;
    };
    double lat = 34.0, lon = -6.8, heading = 90.0;
    const double pi = 3.14159265358979323846;
    std::vector<double> v;
    for (size_t i = 0; i < READINGS; i++) {
        const double t = double(i);
        const double speed = std::max(50.0 + 30.0 * std::sin(t / 120.0), 0.0) + noise();
        heading = heading + 0.5 * std::cos(t / 60.0) + noise();
        heading = std::fmod(heading, 360.0);  // rem_euclid(360.0), as Rust computes it
        if (heading < 0.0) heading += 360.0;
        lat += speed / 3.6 * std::cos(heading * (pi / 180.0)) / 111320.0;
        lon += speed / 3.6 * std::sin(heading * (pi / 180.0)) / (111320.0 * std::cos(lat * (pi / 180.0)));
        const double power = speed * 0.2 + noise() * 4.0;
        const double row[CHANNELS] = {speed, 90.0 - t * 0.001, power, heading, lat, lon, 20.0 + std::sin(t / 300.0) * 5.0};
        v.insert(v.end(), row, row + CHANNELS);
    }
    return v;
}

int main(int argc, char **argv) {
    const double seconds = argc > 1 ? std::atof(argv[1]) : 5.0;
    const std::vector<double> values = drive();
    std::vector<LockstepReading> readings(READINGS);
    for (size_t i = 0; i < READINGS; i++)
        readings[i] = {1700000000000 + int64_t(i) * 1000, (1u << CHANNELS) - 1, &values[i * CHANNELS]};
    std::vector<uint8_t> buf(1 << 16);
    std::vector<double> rates;
    size_t bytes = 0;
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
        const auto t0 = std::chrono::steady_clock::now();
        lockstep::Encoder enc = lockstep::open("5YJ3E1EA000000001", 42);
        bytes = 0;
        for (size_t i = 0; i < READINGS; i++) {
            lockstep::check(lockstep_encoder_push(enc.get(), &readings[i], nullptr), "push");
            if (lockstep_encoder_pending(enc.get()) == BATCH) {
                size_t len = 0;
                lockstep::check(lockstep_encoder_cut(enc.get(), buf.data(), buf.size(), &len, nullptr), "cut");
                bytes += len;
            }
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rates.push_back(double(READINGS) / s);
    }
    std::sort(rates.begin(), rates.end());
    std::printf("{\"bench\":\"c_abi_encode\",\"readings\":%zu,\"batch\":%zu,\"iterations\":%zu,"
                "\"readings_per_s_median\":%.0f,\"readings_per_s_best\":%.0f,\"encoded_bytes\":%zu}\n",
                READINGS, BATCH, rates.size(), rates[rates.size() / 2], rates.back(), bytes);
}
