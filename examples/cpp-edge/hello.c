/* The smallest C logger loop on the lockstep codec (C99): open a session,
 * push readings with a presence mask, cut batches into a caller buffer, save
 * the encoder between batches. Posting the bytes is left to the logger
 * (see edge.cpp). Exit status 0 when every call succeeded. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "lockstep_codec.h"

static int ok(LockstepStatus s, const char *call) {
    if (s != LOCKSTEP_STATUS_OK) fprintf(stderr, "%s: %s\n", call, lockstep_last_error());
    return s == LOCKSTEP_STATUS_OK;
}

int main(void) {
    LockstepEncoder *enc = NULL;
    if (!ok(lockstep_encoder_open("5YJ3E1EA000000001", 0x1234abcdu, NULL, &enc), "open")) return 1;
    uint8_t buf[4096], saved[1024];
    size_t len = 0, saved_len = 0, bytes = 0, batches = 0;
    for (int i = 0; i < 600; i++) {
        /* speed, battery, power, heading, latitude, longitude, altitude */
        double v[7] = {40 + 10 * sin(i / 30.0), 80 - i * 0.01, 5 * cos(i / 7.0), 90, 34 + i * 1e-5, -6.8, 20};
        LockstepReading r = {1700000000000 + (int64_t)i * 1000, 0x77 /* no heading */, v};
        if (!ok(lockstep_encoder_push(enc, &r, NULL), "push")) return 1;
        if (lockstep_encoder_pending(enc) == 60) {
            LockstepBatchInfo info;
            if (!ok(lockstep_encoder_cut(enc, buf, sizeof buf, &len, &info), "cut")) return 1;
            if (!ok(lockstep_encoder_save(enc, saved, sizeof saved, &saved_len), "save")) return 1;
            bytes += len;
            batches++;
        }
    }
    printf("%s: catalog %016" PRIx64 ", 600 readings in %zu batches, %zu bytes; saved state %zu bytes\n",
           lockstep_version(), lockstep_catalog_hash(), batches, bytes, saved_len);
    lockstep_encoder_free(enc);
    return 0;
}
