/* libFuzzer target for the SRV answer parser (discovery/disc_dns.c).
 *
 * The input is one DNS message, parsed as the answer to the SRV question
 * _sparkrelay._tcp.relays.test with the message's own id (so the fuzzer
 * gets past the id check). Checked on every input, as discovery relies on
 * it: no read outside the message (ASan), no hang (compression loops), a
 * failed parse leaves no record and says why in one printable line, a
 * truncated answer holds no record, and every record kept has a port and
 * a target that is a host name. The records kept are then ordered
 * (disc_srv_order), which must give a permutation. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "common/sr_text.h"
#include "discovery/disc_dns.h"

#define FZ_QNAME "_sparkrelay._tcp.relays.test"

static uint32_t fz_state = 1;

static uint32_t fz_rand_below(uint32_t n)
{
	fz_state = fz_state * 1103515245u + 12345u;
	return (fz_state >> 8) % n;
}

static void fz_check_line(const char *s)
{
	if (!s[0])
		abort();
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct disc_srv_answer ans;
	char err[256];
	unsigned order[DISC_SRV_MAX], seen[DISC_SRV_MAX];
	uint16_t id = size >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 0;
	int rc;

	err[0] = '\0';
	rc = disc_srv_parse(data, size, id, FZ_QNAME, &ans, err, sizeof(err));
	if (rc != 0) {
		if (ans.n != 0 || ans.truncated)
			abort();
		fz_check_line(err);
		return 0;
	}
	if (ans.n > DISC_SRV_MAX || (ans.truncated && ans.n))
		abort();
	for (size_t i = 0; i < ans.n; i++)
		if (ans.rec[i].port == 0 || !sr_valid_host(ans.rec[i].target) ||
		    strlen(ans.rec[i].target) > DISC_DNS_NAME_TEXT)
			abort();
	disc_srv_order(ans.rec, ans.n, order, fz_rand_below);
	memset(seen, 0, sizeof(seen));
	for (size_t i = 0; i < ans.n; i++) {
		if (order[i] >= ans.n || seen[order[i]]++)
			abort();
		if (i && ans.rec[order[i]].priority < ans.rec[order[i - 1]].priority)
			abort();
	}
	return 0;
}
