/* libFuzzer target for the EndpointSlice list parser (discovery/disc_k8s.c).
 *
 * The input is the body of an API answer, parsed twice: for the port named
 * "tunnel" and for a Service's only port, keeping at most 8 endpoints.
 * Checked on every input, as discovery relies on it: no crash, leak or
 * hang; a failed parse keeps nothing and says why in one printable line;
 * every endpoint kept is an IPv4 or IPv6 address with a port 1..65535,
 * none twice; no more are kept than the bound, nor than were Ready. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include "common/sr_err.h"
#include "common/sr_util.h"
#include "discovery/disc_k8s.h"

#define FZ_MAX 8

static uint32_t fz_state = 1;

static uint32_t fz_rand_below(uint32_t n)
{
	fz_state = fz_state * 1103515245u + 12345u;
	return (fz_state >> 8) % n;
}

static void fz_check(const char *data, size_t size, const char *port)
{
	struct disc_ep eps[FZ_MAX];
	char err[512];
	size_t n = 99, ready = 99;
	int rc;

	err[0] = '\0';
	rc = disc_k8s_parse(data, size, port, eps, FZ_MAX, &n, &ready, fz_rand_below, err,
			    sizeof(err));
	if (rc != 0) {
		if (n != 0 || ready != 0 || !err[0])
			abort();
		for (const char *s = err; *s; s++)
			if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
				abort();
		return;
	}
	if (n > FZ_MAX || n > ready)
		abort();
	for (size_t i = 0; i < n; i++) {
		int fam = eps[i].ss.ss_family;

		if (!((fam == AF_INET && eps[i].len == sizeof(struct sockaddr_in)) ||
		      (fam == AF_INET6 && eps[i].len == sizeof(struct sockaddr_in6))))
			abort();
		if (sr_addr_port((const struct sockaddr *)&eps[i].ss) == 0)
			abort();
		for (size_t j = 0; j < i; j++)
			if (eps[j].len == eps[i].len &&
			    memcmp(&eps[j].ss, &eps[i].ss, eps[i].len) == 0)
				abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fz_check((const char *)data, size, "tunnel");
	fz_check((const char *)data, size, NULL);
	return 0;
}
