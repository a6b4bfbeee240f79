/* libFuzzer target for the control-message codec (tunnel/tun_ctl.c).
 *
 * The input is fed as a byte stream through tun_ctl_decode with a 4 KiB cap
 * (framing, partial frames, several frames in a row), and as one frame body
 * through tun_ctl_parse, both whole and without its first 4 bytes. Every message that parses is
 * encoded again and must parse back to the same struct: the encoder may never emit what the
 * parser refuses, nor change a value on the way. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "common/sr_err.h"
#include "tunnel/tun_ctl.h"

#define FUZZ_CTL_CAP 4096

static int fuzz_msg_equal(const struct tun_ctl_msg *a, const struct tun_ctl_msg *b)
{
	if (a->type != b->type || a->roles != b->roles || a->ttl_s != b->ttl_s ||
	    strcmp(a->app, b->app) != 0 || strcmp(a->token, b->token) != 0 ||
	    strcmp(a->resume, b->resume) != 0 || strcmp(a->lease, b->lease) != 0 ||
	    strcmp(a->host, b->host) != 0 || strcmp(a->code, b->code) != 0 ||
	    strcmp(a->message, b->message) != 0)
		return 0;
	for (int r = 0; r < TUN_PORT_MAX; r++)
		if (a->ports[r] != b->ports[r])
			return 0;
	return 1;
}

static void fuzz_check_reencode(const struct tun_ctl_msg *msg)
{
	struct evbuffer *buf = evbuffer_new();
	struct tun_ctl_msg again;
	char err[256] = "";
	int rc;

	if (buf == NULL)
		return;
	rc = tun_ctl_encode(msg, buf);
	if (rc != 0) {
		fprintf(stderr, "re-encode of a parsed message failed: %s\n", sr_strerror(rc));
		abort();
	}
	rc = tun_ctl_decode(buf, TUN_CTL_MAX_DEFAULT, &again, err, sizeof(err));
	if (rc != 1 || evbuffer_get_length(buf) != 0) {
		fprintf(stderr, "re-encoded message did not decode: %d %s\n", rc, err);
		abort();
	}
	if (!fuzz_msg_equal(msg, &again)) {
		fprintf(stderr, "re-encoded message decoded to a different struct\n");
		abort();
	}
	evbuffer_free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tun_ctl_msg msg;
	struct evbuffer *in;
	char err[256];
	size_t before;
	int rc;

	in = evbuffer_new();
	if (in == NULL)
		return 0;
	if (evbuffer_add(in, data, size) == 0) {
		/* Each success consumes at least 5 bytes, so this ends. */
		for (;;) {
			before = evbuffer_get_length(in);
			rc = tun_ctl_decode(in, FUZZ_CTL_CAP, &msg, err, sizeof(err));
			if (rc == 1) {
				if (evbuffer_get_length(in) >= before)
					abort();
				fuzz_check_reencode(&msg);
				continue;
			}
			/* A parse error drains its complete frame; keep going so the
			 * frames after it are exercised too. Other results stop. */
			if ((rc == SR_EPROTO || rc == SR_EVERSION) &&
			    evbuffer_get_length(in) < before)
				continue;
			break;
		}
	}
	evbuffer_free(in);

	if (tun_ctl_parse(data, size, &msg, err, sizeof(err)) == 0)
		fuzz_check_reencode(&msg);
	/* The seeds are framed; past the prefix they are valid bodies, and
	 * mutating them here does not have to keep a length prefix right. */
	if (size > 4 && tun_ctl_parse(data + 4, size - 4, &msg, err, sizeof(err)) == 0)
		fuzz_check_reencode(&msg);
	return 0;
}
