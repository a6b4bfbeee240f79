/* See relay_limits.h. */
#include "relay/relay_limits.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

int relay_same_source(const struct sockaddr *a, const struct sockaddr *b)
{
	if (!a || !b || a->sa_family != b->sa_family)
		return 0;
	if (a->sa_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
		       ((const struct sockaddr_in *)b)->sin_addr.s_addr;
	if (a->sa_family == AF_INET6) {
		const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
		const struct in6_addr *y = &((const struct sockaddr_in6 *)b)->sin6_addr;
		size_t n = IN6_IS_ADDR_V4MAPPED(x) || IN6_IS_ADDR_V4MAPPED(y) ? 16 : 8;
		return memcmp(x->s6_addr, y->s6_addr, n) == 0;
	}
	return 0;
}

int relay_identity_key(const char *cn, const char *token, const char *tenant, char *out,
		       size_t outlen)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int n;

	if (!out || outlen < RELAY_IDKEY_MAX)
		return -1;
	if (cn && *cn) {
		n = snprintf(out, outlen, "cn:%s", cn);
	} else if (token && *token) {
		if (EVP_Digest(token, strlen(token), md, &mdlen, EVP_sha256(), NULL) != 1 ||
		    mdlen != 32)
			return -1;
		memcpy(out, "token:", 6);
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(out + 6 + 2 * i, 3, "%02x", md[i]);
		OPENSSL_cleanse(md, sizeof(md));
		return 0;
	} else {
		n = snprintf(out, outlen, "tenant:%s", tenant ? tenant : "");
	}
	/* A CN longer than what tun_tls keeps cannot occur; refuse rather than
	 * bind two different names to one cut key. */
	return n < 0 || (size_t)n >= outlen ? -1 : 0;
}
