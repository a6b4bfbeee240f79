/* Test support: payloads that check themselves. A stream of bytes is named
 * by a seed; any slice of it can be generated or checked from its offset
 * alone, so a transfer of any size needs no copy of what was sent. */
#ifndef TS_PATTERN_H
#define TS_PATTERN_H

#include <stddef.h>
#include <stdint.h>

/* Bytes [off, off+n) of the stream with this seed. */
void ts_pat_fill(uint32_t seed, uint64_t off, uint8_t *buf, size_t n);
/* Index in buf of the first byte that differs from the stream, or -1. */
long ts_pat_check(uint32_t seed, uint64_t off, const uint8_t *buf, size_t n);

#endif
