#include "tests/support/ts_pattern.h"

/* splitmix64 of the word index and the seed: every 8-byte word differs, and
 * so do streams of different seeds (a swapped or repeated slice shows). */
static uint64_t pat_word(uint32_t seed, uint64_t w)
{
	uint64_t x = w * 0x9E3779B97F4A7C15ull + (uint64_t)seed * 0xC2B2AE3D27D4EB4Full + 1;
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

void ts_pat_fill(uint32_t seed, uint64_t off, uint8_t *buf, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint64_t o = off + i;
		uint64_t w = pat_word(seed, o >> 3);

		for (unsigned b = (unsigned)(o & 7); b < 8 && i < n; b++, i++)
			buf[i] = (uint8_t)(w >> (8 * b));
	}
}

long ts_pat_check(uint32_t seed, uint64_t off, const uint8_t *buf, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint64_t o = off + i;
		uint64_t w = pat_word(seed, o >> 3);

		for (unsigned b = (unsigned)(o & 7); b < 8 && i < n; b++, i++)
			if (buf[i] != (uint8_t)(w >> (8 * b)))
				return (long)i;
	}
	return -1;
}
