// A thin C++17 layer over the lockstep codec's C ABI (lockstep_codec.h):
// errors become exceptions, handles are released by RAII, batches and saved
// states come back as byte vectors. Header-only; copy it along with the header.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "lockstep_codec.h"

namespace lockstep {

struct Error : std::runtime_error {
    LockstepStatus status;
    Error(LockstepStatus s, const std::string &what) : std::runtime_error(what), status(s) {}
};

// Throws unless `s` is OK, with the library's message for this thread.
inline void check(LockstepStatus s, const char *call) {
    if (s != LOCKSTEP_STATUS_OK) throw Error(s, std::string(call) + ": " + lockstep_last_error());
}

struct EncoderFree {
    void operator()(LockstepEncoder *e) const { lockstep_encoder_free(e); }
};
using Encoder = std::unique_ptr<LockstepEncoder, EncoderFree>;

inline Encoder open(const std::string &vin, uint64_t session_id, const LockstepEncoderConfig *config = nullptr) {
    LockstepEncoder *e = nullptr;
    check(lockstep_encoder_open(vin.c_str(), session_id, config, &e), "lockstep_encoder_open");
    return Encoder(e);
}

inline Encoder restore(const std::vector<uint8_t> &saved) {
    LockstepEncoder *e = nullptr;
    check(lockstep_encoder_restore(saved.data(), saved.size(), &e), "lockstep_encoder_restore");
    return Encoder(e);
}

// Calls `f(buf, cap, &len)` into a caller-owned buffer, growing it once when
// the library says it is too small (it keeps the data for the second call).
template <class F>
std::vector<uint8_t> into_buffer(F f, const char *call, size_t guess = 1024) {
    std::vector<uint8_t> buf(guess);
    size_t len = 0;
    LockstepStatus s = f(buf.data(), buf.size(), &len);
    if (s == LOCKSTEP_STATUS_BUFFER_TOO_SMALL) {
        buf.resize(len);
        s = f(buf.data(), buf.size(), &len);
    }
    check(s, call);
    buf.resize(len);
    return buf;
}

// The pending readings as one batch (empty: nothing pending).
inline std::vector<uint8_t> cut(LockstepEncoder *e, LockstepBatchInfo *info, size_t guess = 1024) {
    return into_buffer([&](uint8_t *b, size_t cap, size_t *len) { return lockstep_encoder_cut(e, b, cap, len, info); },
                       "lockstep_encoder_cut", guess);
}

// Everything the encoder needs to continue after a restart (no readings pending).
inline std::vector<uint8_t> save(LockstepEncoder *e) {
    return into_buffer([&](uint8_t *b, size_t cap, size_t *len) { return lockstep_encoder_save(e, b, cap, len); },
                       "lockstep_encoder_save", 256);
}

}  // namespace lockstep
