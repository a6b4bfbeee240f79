/* tun_ctl: framing and JSON validation of control-stream messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <jansson.h>

#include "common/sr_err.h"
#include "common/sr_util.h"
#include "tunnel/tun_ctl.h"
#include "tests/support/ts_assert.h"

/* Append a frame with the given body to buf. */
static void put_frame(struct evbuffer *buf, const void *body, size_t len)
{
	unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
				(unsigned char)(len >> 8), (unsigned char)len};

	assert_int_equal(evbuffer_add(buf, hdr, sizeof(hdr)), 0);
	assert_int_equal(evbuffer_add(buf, body, len), 0);
}

static void put_str(struct evbuffer *buf, const char *body)
{
	put_frame(buf, body, strlen(body));
}

static int parse_json(const char *json, struct tun_ctl_msg *msg, char *err, size_t errlen)
{
	return tun_ctl_parse(json, strlen(json), msg, err, errlen);
}

/* Parse must fail with rc and an error text containing want. */
static void expect_fail(const char *json, int rc, const char *want)
{
	struct tun_ctl_msg msg;
	char err[256] = "";
	int got = parse_json(json, &msg, err, sizeof(err));

	if (got != rc || strstr(err, want) == NULL)
		fail_msg("input %s: got %d \"%s\", want %d containing \"%s\"", json, got, err,
			 rc, want);
}

static void expect_ok(const char *json, struct tun_ctl_msg *msg)
{
	char err[256] = "";
	int rc = parse_json(json, msg, err, sizeof(err));

	if (rc != 0)
		fail_msg("input %s: got %d \"%s\", want 0", json, rc, err);
}

/* Encode in, decode it back, return the frame's JSON body (caller decrefs)
 * so tests can check which keys went on the wire. */
static json_t *round_trip(const struct tun_ctl_msg *in, struct tun_ctl_msg *out)
{
	struct evbuffer *buf = evbuffer_new();
	unsigned char hdr[4];
	size_t len;
	json_t *body;
	char err[256] = "";
	int rc;

	assert_non_null(buf);
	assert_int_equal(tun_ctl_encode(in, buf), 0);
	len = evbuffer_get_length(buf);
	assert_true(len > 4);
	assert_int_equal(evbuffer_copyout(buf, hdr, 4), 4);
	assert_int_equal(
	    ((size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3]),
	    len - 4);
	body = json_loadb((const char *)evbuffer_pullup(buf, -1) + 4, len - 4, 0, NULL);
	assert_non_null(body);
	rc = tun_ctl_decode(buf, TUN_CTL_MAX_DEFAULT, out, err, sizeof(err));
	if (rc != 1)
		fail_msg("decode: %d %s", rc, err);
	assert_int_equal(evbuffer_get_length(buf), 0);
	evbuffer_free(buf);
	return body;
}

/* Keys of obj must be exactly the NULL-terminated list. */
static void assert_keys(json_t *obj, const char *const *keys)
{
	size_t n = 0;

	for (; keys[n] != NULL; n++)
		if (json_object_get(obj, keys[n]) == NULL)
			fail_msg("key \"%s\" missing from encoded message", keys[n]);
	assert_int_equal(json_object_size(obj), n);
}

static void fill_junk(struct tun_ctl_msg *m)
{
	/* Fields of other types that the encoder must not send. */
	snprintf(m->host, sizeof(m->host), "junk.example");
	snprintf(m->code, sizeof(m->code), "junk");
}

static void test_round_trip_register(void **state)
{
	struct tun_ctl_msg in, out;
	json_t *body;

	memset(&in, 0, sizeof(in));
	in.type = TUN_CTL_REGISTER;
	snprintf(in.app, sizeof(in.app), "app-\xc3\xa9t\xc3\xa9 \"q\"");
	in.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	snprintf(in.token, sizeof(in.token), "bearer-abc");
	snprintf(in.resume, sizeof(in.resume), "R-123");
	body = round_trip(&in, &out);
	assert_ctl_msg_equal(&in, &out);
	assert_keys(
	    body, (const char *const[]){"v", "type", "app", "roles", "token", "resume", NULL});
	assert_string_equal(json_string_value(json_object_get(body, "type")), "register");
	assert_int_equal(json_integer_value(json_object_get(body, "v")), TUN_CTL_VERSION);
	assert_int_equal(out.v, TUN_CTL_VERSION);
	json_decref(body);

	/* A resume names its lease (newer sidecars); a bad id is refused both
	 * ways, and no lease goes out without a resume. */
	snprintf(in.lease, sizeof(in.lease), "L-3-5ca1ab1e");
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "app", "roles", "token", "resume",
						"lease", NULL});
	assert_string_equal(out.lease, "L-3-5ca1ab1e");
	json_decref(body);
	snprintf(in.lease, sizeof(in.lease), "L-3/x");
	{
		struct evbuffer *b = evbuffer_new();
		assert_int_equal(tun_ctl_encode(&in, b), SR_EINVAL);
		evbuffer_free(b);
	}
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"resume\":\"abc\",\"lease\":\"../x\"}",
		    SR_EPROTO, "field \"lease\": not a lease id");
	in.resume[0] = '\0';
	snprintf(in.lease, sizeof(in.lease), "L-3-5ca1ab1e");
	body = round_trip(&in, &out);
	assert_null(json_object_get(body, "lease"));
	json_decref(body);
	/* and none is read without a resume, or with a join (found by fuzz_ctl) */
	expect_ok("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		  "\"lease\":\"L-3-5ca1ab1e\"}",
		  &out);
	assert_string_equal(out.lease, "");
	expect_ok("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		  "\"join\":\"L-1-2\",\"resume\":\"join_abc\",\"lease\":\"L-3-5ca1ab1e\"}",
		  &out);
	assert_string_equal(out.lease, "");
	snprintf(in.resume, sizeof(in.resume), "R-123");
	in.lease[0] = '\0';

	/* Without token and resume they are left out; junk of other types too. */
	in.token[0] = in.resume[0] = '\0';
	in.roles = TUN_ROLE_BIT(TUN_PORT_UI);
	fill_junk(&in);
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "app", "roles", NULL});
	assert_string_equal(out.app, in.app);
	assert_int_equal(out.roles, TUN_ROLE_BIT(TUN_PORT_UI));
	assert_string_equal(out.host, "");
	assert_string_equal(out.code, "");
	json_decref(body);
}

/* A join names the lease and proves the resume token behind "join_"; an old
 * relay that ignores "join" sees a resume token it cannot have made. */
static void test_join(void **state)
{
	struct tun_ctl_msg in, out;
	char proof[TUN_CTL_RESUME_MAX];
	char long_tok[TUN_CTL_RESUME_MAX];
	json_t *body;

	memset(&in, 0, sizeof(in));
	in.type = TUN_CTL_REGISTER;
	snprintf(in.app, sizeof(in.app), "nb");
	in.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	snprintf(in.join, sizeof(in.join), "L-7-0badcafe");
	assert_int_equal(tun_ctl_join_proof("abc123", in.resume, sizeof(in.resume)), 0);
	assert_string_equal(in.resume, "join_abc123");
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "app", "roles", "resume", "join",
						NULL});
	assert_string_equal(out.join, "L-7-0badcafe");
	assert_string_equal(out.resume, "join_abc123");
	assert_string_equal(tun_ctl_join_token(out.resume), "abc123");
	assert_int_equal(out.replaces, 0);
	json_decref(body);

	/* The tunnel it replaces (any u32), and a lease's tunnel id. */
	in.replaces = UINT32_MAX;
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "app", "roles", "resume", "join",
						"replaces", NULL});
	assert_int_equal(out.replaces, UINT32_MAX);
	json_decref(body);
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":\"L-1\",\"resume\":\"join_abc\",\"replaces\":-1}",
		    SR_EPROTO, "field \"replaces\": must be an integer");
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":\"L-1\",\"resume\":\"join_abc\",\"replaces\":4294967296}",
		    SR_EPROTO, "field \"replaces\": must be an integer");
	expect_ok("{\"v\":2,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\","
		  "\"ports\":{\"driver\":1},\"ttl\":1,\"resume\":\"\",\"tunnel\":7}",
		  &out);
	assert_int_equal(out.tunnel, 7);
	expect_fail("{\"v\":2,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\","
		    "\"ports\":{\"driver\":1},\"ttl\":1,\"resume\":\"\",\"tunnel\":\"7\"}",
		    SR_EPROTO, "field \"tunnel\": must be an integer");

	/* The proof's rules: a token of the resume alphabet that fits. */
	assert_null(tun_ctl_join_token("abc123"));
	assert_null(tun_ctl_join_token("join_"));
	assert_null(tun_ctl_join_token("join_a b"));
	assert_int_equal(tun_ctl_join_proof("", proof, sizeof(proof)), SR_EINVAL);
	assert_int_equal(tun_ctl_join_proof("a.b", proof, sizeof(proof)), SR_EINVAL);
	memset(long_tok, 'a', sizeof(long_tok) - 1);
	long_tok[sizeof(long_tok) - 1] = '\0';
	/* 75 characters of token: 80 bytes with the prefix and the NUL */
	assert_int_equal(tun_ctl_join_proof(long_tok + 4, proof, sizeof(proof)), SR_EINVAL);
	long_tok[sizeof(long_tok) - 1 - 5] = '\0';
	assert_int_equal(tun_ctl_join_proof(long_tok, proof, sizeof(proof)), 0);

	/* The encoder refuses a join without its proof, or a bad lease id. */
	{
		struct evbuffer *buf = evbuffer_new();
		struct tun_ctl_msg bad = in;
		snprintf(bad.resume, sizeof(bad.resume), "abc123");
		assert_int_equal(tun_ctl_encode(&bad, buf), SR_EINVAL);
		bad = in;
		snprintf(bad.join, sizeof(bad.join), "X-1");
		assert_int_equal(tun_ctl_encode(&bad, buf), SR_EINVAL);
		assert_int_equal(evbuffer_get_length(buf), 0);
		evbuffer_free(buf);
	}
	/* The parser likewise; "join":"" is no join. */
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":\"L-1\",\"resume\":\"abc\"}",
		    SR_EPROTO, "field \"resume\": a join's resume is");
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":\"L-1\"}",
		    SR_EPROTO, "field \"resume\": a join's resume is");
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":\"lease\",\"resume\":\"join_abc\"}",
		    SR_EPROTO, "field \"join\": not a lease id");
	expect_fail("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		    "\"join\":7,\"resume\":\"join_abc\"}",
		    SR_EPROTO, "field \"join\": must be a string");
	expect_ok("{\"v\":2,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		  "\"join\":\"\",\"resume\":\"abc\"}",
		  &out);
	assert_string_equal(out.join, "");
	assert_string_equal(out.resume, "abc");
}

static void test_round_trip_lease(void **state)
{
	struct tun_ctl_msg in, out;
	json_t *body;

	memset(&in, 0, sizeof(in));
	in.type = TUN_CTL_LEASE;
	snprintf(in.lease, sizeof(in.lease), "L-7");
	snprintf(in.host, sizeof(in.host), "relay-0.example");
	in.ports[TUN_PORT_DRIVER] = 40001;
	in.ports[TUN_PORT_BLOCKMANAGER] = 65535;
	in.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	in.ttl_s = TUN_CTL_TTL_MAX;
	snprintf(in.resume, sizeof(in.resume), "R-new");
	snprintf(in.app, sizeof(in.app), "junk-app");
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "lease", "host", "ports", "ttl",
						"resume", NULL});
	assert_keys(json_object_get(body, "ports"),
		    (const char *const[]){"driver", "blockManager", NULL});
	assert_string_equal(out.app, "");
	in.app[0] = '\0';
	assert_ctl_msg_equal(&in, &out);
	json_decref(body);

	/* roles of a decoded lease are the granted ports, whatever was set. */
	in.roles = 0;
	in.ports[TUN_PORT_DRIVER] = 0;
	in.ports[TUN_PORT_UI] = 1;
	in.ttl_s = 0;
	body = round_trip(&in, &out);
	assert_int_equal(out.roles,
			 TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) | TUN_ROLE_BIT(TUN_PORT_UI));
	assert_int_equal(out.ports[TUN_PORT_DRIVER], 0);
	assert_int_equal(out.ports[TUN_PORT_UI], 1);
	assert_int_equal(out.ttl_s, 0);
	json_decref(body);
}

static void test_round_trip_error(void **state)
{
	struct tun_ctl_msg in, out;
	json_t *body;

	memset(&in, 0, sizeof(in));
	in.type = TUN_CTL_ERROR;
	snprintf(in.code, sizeof(in.code), "no_ports");
	snprintf(in.message, sizeof(in.message), "pool \"default\" is exhausted\n");
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "code", "message", NULL});
	assert_ctl_msg_equal(&in, &out);
	json_decref(body);

	in.message[0] = '\0';
	body = round_trip(&in, &out);
	assert_keys(body, (const char *const[]){"v", "type", "code", NULL});
	assert_ctl_msg_equal(&in, &out);
	json_decref(body);
}

static void test_round_trip_bare_types(void **state)
{
	static const enum tun_ctl_type types[] = {TUN_CTL_RELEASE, TUN_CTL_RELEASED,
						  TUN_CTL_DRAIN};
	static const char *const names[] = {"release", "released", "drain"};

	for (size_t i = 0; i < SR_ARRAY_LEN(types); i++) {
		struct tun_ctl_msg in, out;
		json_t *body;

		memset(&in, 0, sizeof(in));
		in.type = types[i];
		fill_junk(&in);
		in.ports[0] = 5;
		body = round_trip(&in, &out);
		assert_keys(body, (const char *const[]){"v", "type", NULL});
		assert_string_equal(json_string_value(json_object_get(body, "type")), names[i]);
		assert_string_equal(tun_ctl_type_name(types[i]), names[i]);
		assert_int_equal(out.type, types[i]);
		assert_string_equal(out.host, "");
		assert_int_equal(out.ports[0], 0);
		json_decref(body);
	}
}

static void test_names(void **state)
{
	assert_string_equal(tun_port_role_name(TUN_PORT_DRIVER), "driver");
	assert_string_equal(tun_port_role_name(TUN_PORT_BLOCKMANAGER), "blockManager");
	assert_string_equal(tun_port_role_name(TUN_PORT_UI), "ui");
	assert_null(tun_port_role_name(TUN_PORT_MAX));
	assert_null(tun_port_role_name((enum tun_port_role) - 1));
	assert_int_equal(tun_port_role_from_name("blockManager"), TUN_PORT_BLOCKMANAGER);
	assert_int_equal(tun_port_role_from_name("blockmanager"), -1);
	assert_int_equal(tun_port_role_from_name(NULL), -1);
	assert_null(tun_ctl_type_name((enum tun_ctl_type)0));
	assert_null(tun_ctl_type_name((enum tun_ctl_type)(TUN_CTL_DRAIN + 1)));
}

static void test_encode_refuses_what_parse_refuses(void **state)
{
	struct evbuffer *buf = evbuffer_new();
	struct tun_ctl_msg m;

	assert_non_null(buf);
	memset(&m, 0, sizeof(m));
	m.type = (enum tun_ctl_type)42;
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL);

	m.type = TUN_CTL_REGISTER;
	snprintf(m.app, sizeof(m.app), "a");
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL); /* no roles */
	m.roles = 1u << TUN_PORT_MAX;
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL); /* unknown role bit */
	m.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	memset(m.app, 'x', sizeof(m.app)); /* not terminated */
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL);
	m.app[0] = '\0';
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL); /* empty app */
	snprintf(m.app, sizeof(m.app), "bad\xff utf8");
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL);

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_LEASE;
	snprintf(m.lease, sizeof(m.lease), "L-1");
	snprintf(m.host, sizeof(m.host), "h");
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL); /* no ports */

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_ERROR;
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL); /* no code */

	assert_int_equal(evbuffer_get_length(buf), 0);
	evbuffer_free(buf);
}

static void encode_lease(struct evbuffer *buf, const char *id)
{
	struct tun_ctl_msg m;

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_LEASE;
	snprintf(m.lease, sizeof(m.lease), "%s", id);
	snprintf(m.host, sizeof(m.host), "10.0.0.1");
	m.ports[TUN_PORT_DRIVER] = 40001;
	m.ttl_s = 300;
	snprintf(m.resume, sizeof(m.resume), "R");
	assert_int_equal(tun_ctl_encode(&m, buf), 0);
}

static void test_fragmented_decodes_once(void **state)
{
	struct evbuffer *src = evbuffer_new(), *in = evbuffer_new();
	struct tun_ctl_msg m;
	unsigned char *bytes;
	size_t len, decoded_at = 0;
	int count = 0;

	assert_non_null(src);
	assert_non_null(in);
	encode_lease(src, "L-frag");
	len = evbuffer_get_length(src);
	bytes = evbuffer_pullup(src, -1);
	for (size_t i = 0; i < len; i++) {
		int rc;

		assert_int_equal(evbuffer_add(in, bytes + i, 1), 0);
		rc = tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0);
		assert_true(rc == 0 || rc == 1);
		if (rc == 1) {
			count++;
			decoded_at = i + 1;
		} else {
			/* Incomplete frames stay in the buffer untouched. */
			assert_int_equal(evbuffer_get_length(in), i + 1);
		}
	}
	assert_int_equal(count, 1);
	assert_int_equal(decoded_at, len);
	assert_string_equal(m.lease, "L-frag");
	assert_int_equal(evbuffer_get_length(in), 0);
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0), 0);
	evbuffer_free(src);
	evbuffer_free(in);
}

static void test_two_frames_in_order(void **state)
{
	struct evbuffer *in = evbuffer_new();
	struct tun_ctl_msg m;
	static const char drain[] = "{\"v\":1,\"type\":\"drain\"}";

	assert_non_null(in);
	encode_lease(in, "L-first");
	put_frame(in, drain, strlen(drain));
	/* plus half of a third frame's prefix */
	assert_int_equal(evbuffer_add(in, "\0\0", 2), 0);

	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0), 1);
	assert_int_equal(m.type, TUN_CTL_LEASE);
	assert_string_equal(m.lease, "L-first");
	assert_int_equal(evbuffer_get_length(in), 4 + strlen(drain) + 2);
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0), 1);
	assert_int_equal(m.type, TUN_CTL_DRAIN);
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0), 0);
	assert_int_equal(evbuffer_get_length(in), 2);
	evbuffer_free(in);
}

static void test_oversize_prefix_too_big(void **state)
{
	struct evbuffer *in = evbuffer_new();
	static const unsigned char hdr[4] = {0x00, 0x01, 0x00, 0x01}; /* 65537 */
	static const unsigned char huge[4] = {0xff, 0xff, 0xff, 0xff};
	struct tun_ctl_msg m;
	char err[128] = "";

	assert_non_null(in);
	/* Only the prefix is there: the verdict must not wait for the body. */
	assert_int_equal(evbuffer_add(in, hdr, 4), 0);
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, err, sizeof(err)),
			 SR_ETOOBIG);
	assert_non_null(strstr(err, "65537"));
	assert_int_equal(evbuffer_get_length(in), 4);
	/* The same frame is fine under a larger cap (incomplete, so 0). */
	assert_int_equal(tun_ctl_decode(in, 65537, &m, NULL, 0), 0);
	evbuffer_drain(in, 4);
	assert_int_equal(evbuffer_add(in, huge, 4), 0);
	assert_int_equal(tun_ctl_decode(in, 4096, &m, NULL, 0), SR_ETOOBIG);
	evbuffer_free(in);

	in = evbuffer_new();
	assert_non_null(in);
	put_str(in, "{\"v\":1,\"type\":\"drain\"}");
	/* The cap is inclusive: a body of exactly max bytes is accepted. */
	assert_int_equal(tun_ctl_decode(in, 21, &m, NULL, 0), SR_ETOOBIG);
	assert_int_equal(tun_ctl_decode(in, 22, &m, NULL, 0), 1);
	assert_int_equal(m.type, TUN_CTL_DRAIN);
	evbuffer_free(in);
}

static void test_zero_length(void **state)
{
	struct evbuffer *in = evbuffer_new();
	struct tun_ctl_msg m;
	char err[128] = "";

	assert_non_null(in);
	assert_int_equal(evbuffer_add(in, "\0\0\0\0", 4), 0);
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, err, sizeof(err)),
			 SR_EPROTO);
	assert_non_null(strstr(err, "empty"));
	evbuffer_free(in);
}

static void test_decode_bad_body_drains_that_frame(void **state)
{
	struct evbuffer *in = evbuffer_new();
	struct tun_ctl_msg m;
	char err[128] = "";

	assert_non_null(in);
	put_str(in, "{\"v\":1,");
	put_str(in, "{\"v\":1,\"type\":\"release\"}");
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, err, sizeof(err)),
			 SR_EPROTO);
	assert_non_null(strstr(err, "malformed JSON"));
	assert_int_equal(evbuffer_get_length(in), 4 + strlen("{\"v\":1,\"type\":\"release\"}"));
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, err, sizeof(err)), 1);
	assert_int_equal(m.type, TUN_CTL_RELEASE);
	evbuffer_free(in);
}

static void test_malformed_json(void **state)
{
	expect_fail("{\"v\":1,", SR_EPROTO, "malformed JSON");
	expect_fail("{\"v\":1,\"type\":\"drain\"} x", SR_EPROTO, "malformed JSON");
	expect_fail("{\"v\":1,\"type\":\"drain\"}{}", SR_EPROTO, "malformed JSON");
	expect_fail("", SR_EPROTO, "malformed JSON");
	expect_fail("{'v':1}", SR_EPROTO, "malformed JSON");
	/* \u0000 would cut a C string short: refused by the loader. */
	expect_fail("{\"v\":1,\"type\":\"error\",\"code\":\"a\\u0000b\"}", SR_EPROTO,
		    "malformed JSON");

	/* Bytes after a NUL within the frame are not ignored. */
	struct tun_ctl_msg m;
	static const char nul[] = "{\"v\":1,\"type\":\"drain\"}\0junk";
	assert_int_equal(tun_ctl_parse(nul, sizeof(nul) - 1, &m, NULL, 0), SR_EPROTO);
	/* Invalid UTF-8 inside a string. */
	expect_fail("{\"v\":1,\"type\":\"error\",\"code\":\"\xff\"}", SR_EPROTO,
		    "malformed JSON");
}

/* jansson quotes the bytes near a syntax error; the peer chose them, and
 * the message ends up in a log line: nothing outside printable ASCII. */
static void test_malformed_json_message_is_masked(void **state)
{
	static const char body[] = "{\"v\":1,\"type\":\xe2\x80\xae\x1b[31m\xc2\x9b}";
	struct tun_ctl_msg m;
	char err[256];

	(void)state;
	assert_int_equal(tun_ctl_parse(body, sizeof(body) - 1, &m, err, sizeof(err)), SR_EPROTO);
	assert_non_null(strstr(err, "malformed JSON"));
	for (const unsigned char *p = (const unsigned char *)err; *p; p++)
		assert_true(*p >= 0x20 && *p < 0x7f);
}

static void test_non_object(void **state)
{
	expect_fail("[{\"v\":1,\"type\":\"drain\"}]", SR_EPROTO, "must be a JSON object");
	expect_fail("[]", SR_EPROTO, "must be a JSON object");
	expect_fail("\"drain\"", SR_EPROTO, "");
	expect_fail("1", SR_EPROTO, "");
	expect_fail("null", SR_EPROTO, "");
}

static void test_duplicate_keys(void **state)
{
	expect_fail("{\"v\":1,\"type\":\"drain\",\"type\":\"drain\"}", SR_EPROTO, "duplicate");
	expect_fail("{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
		    "\"resume\":\"\",\"ports\":{\"driver\":1,\"driver\":2}}",
		    SR_EPROTO, "duplicate");
}

static void test_version(void **state)
{
	struct tun_ctl_msg ok;

	expect_fail("{\"v\":3,\"type\":\"drain\"}", SR_EVERSION, "field \"v\"");
	expect_fail("{\"v\":0,\"type\":\"drain\"}", SR_EVERSION, "unsupported version 0");
	expect_fail("{\"v\":3,\"type\":\"drain\"}", SR_EVERSION, "speaks 1 and 2");
	/* A newer version is refused as such even with a type we do not know. */
	expect_fail("{\"v\":3,\"type\":\"hello\"}", SR_EVERSION, "field \"v\"");
	/* Both versions parse, and the message says which it was. */
	expect_ok("{\"v\":1,\"type\":\"drain\"}", &ok);
	assert_int_equal(ok.v, 1);
	expect_ok("{\"v\":2,\"type\":\"drain\"}", &ok);
	assert_int_equal(ok.v, 2);
	expect_fail("{\"type\":\"drain\"}", SR_EPROTO, "field \"v\": missing");
	expect_fail("{\"v\":\"1\",\"type\":\"drain\"}", SR_EPROTO, "field \"v\": must be");
	expect_fail("{\"v\":1.0,\"type\":\"drain\"}", SR_EPROTO, "field \"v\": must be");
	expect_fail("{\"v\":true,\"type\":\"drain\"}", SR_EPROTO, "field \"v\": must be");

	struct evbuffer *in = evbuffer_new();
	struct tun_ctl_msg m;
	assert_non_null(in);
	put_str(in, "{\"v\":3,\"type\":\"drain\"}");
	assert_int_equal(tun_ctl_decode(in, TUN_CTL_MAX_DEFAULT, &m, NULL, 0), SR_EVERSION);
	evbuffer_free(in);
}

static void test_type(void **state)
{
	expect_fail("{\"v\":1}", SR_EPROTO, "field \"type\": missing");
	expect_fail("{\"v\":1,\"type\":\"hello\"}", SR_EPROTO,
		    "unknown message type \"hello\"");
	expect_fail("{\"v\":1,\"type\":\"Drain\"}", SR_EPROTO, "unknown message type");
	expect_fail("{\"v\":1,\"type\":3}", SR_EPROTO, "field \"type\": must be a string");
	/* Peer text in the error is kept printable. */
	expect_fail("{\"v\":1,\"type\":\"a\\nb\"}", SR_EPROTO, "\"a?b\"");
}

static void test_missing_required(void **state)
{
	static const struct {
		const char *json, *want;
	} cases[] = {
	    {"{\"v\":1,\"type\":\"register\",\"roles\":[\"driver\"]}",
	     "field \"app\": missing"},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"\",\"roles\":[\"driver\"]}",
	     "field \"app\": must not be empty"},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"a\"}", "field \"roles\": missing"},
	    {"{\"v\":1,\"type\":\"lease\",\"host\":\"h\",\"ports\":{\"driver\":1},\"ttl\":1,"
	     "\"resume\":\"r\"}",
	     "field \"lease\": missing"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"ports\":{\"driver\":1},\"ttl\":1,"
	     "\"resume\":\"r\"}",
	     "field \"host\": missing"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
	     "\"resume\":\"r\"}",
	     "field \"ports\": missing"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ports\":{},"
	     "\"ttl\":1,\"resume\":\"r\"}",
	     "field \"ports\": must grant at least one"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ports\":{\"driver\":"
	     "1},"
	     "\"resume\":\"r\"}",
	     "field \"ttl\": missing"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ports\":{\"driver\":"
	     "1},"
	     "\"ttl\":1}",
	     "field \"resume\": missing"},
	    {"{\"v\":1,\"type\":\"error\",\"message\":\"m\"}", "field \"code\": missing"},
	    {"{\"v\":1,\"type\":\"error\",\"code\":\"\"}", "field \"code\": must not be empty"},
	    /* wrong types for required fields */
	    {"{\"v\":1,\"type\":\"register\",\"app\":7,\"roles\":[\"driver\"]}",
	     "field \"app\": must be a string"},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],\"token\":1}",
	     "field \"token\": must be a string"},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
	     "\"resume\":null}",
	     "field \"resume\": must be a string"},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ports\":[40001],"
	     "\"ttl\":1,\"resume\":\"r\"}",
	     "field \"ports\": must be an object"},
	    {"{\"v\":1,\"type\":\"error\",\"code\":\"c\",\"message\":{}}",
	     "field \"message\": must be a string"},
	};

	for (size_t i = 0; i < SR_ARRAY_LEN(cases); i++)
		expect_fail(cases[i].json, SR_EPROTO, cases[i].want);

	/* The optional fields really are optional. */
	struct tun_ctl_msg m;
	expect_ok("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"ui\"]}", &m);
	assert_string_equal(m.token, "");
	assert_string_equal(m.resume, "");
	expect_ok("{\"v\":1,\"type\":\"error\",\"code\":\"c\"}", &m);
	assert_string_equal(m.message, "");
	expect_ok(
	    "{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ports\":{\"ui\":9},"
	    "\"ttl\":0,\"resume\":\"\"}",
	    &m);
	assert_int_equal(m.ports[TUN_PORT_UI], 9);
	assert_int_equal(m.roles, TUN_ROLE_BIT(TUN_PORT_UI));
}

static char *make_str(size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, 'a', n);
	s[n] = '\0';
	return s;
}

/* tmpl with its one "@" replaced by val; caller frees. (Not a printf format:
 * -Wformat=2 wants literal formats.) */
static char *subst(const char *tmpl, const char *val)
{
	const char *at = strchr(tmpl, '@');
	size_t pre, cap;
	char *out;

	assert_non_null(at);
	pre = (size_t)(at - tmpl);
	cap = strlen(tmpl) + strlen(val);
	out = malloc(cap);
	assert_non_null(out);
	memcpy(out, tmpl, pre);
	memcpy(out + pre, val, strlen(val));
	memcpy(out + pre + strlen(val), at + 1, strlen(at + 1) + 1);
	return out;
}

/* tmpl with its "@" replaced by a string of n bytes. */
static int parse_with_len(const char *tmpl, size_t n, struct tun_ctl_msg *m, char *err,
			  size_t errlen)
{
	char *val = make_str(n);
	char *json = subst(tmpl, val);
	int rc;

	rc = parse_json(json, m, err, errlen);
	free(json);
	free(val);
	return rc;
}

/* Parse tmpl with "@" replaced by val: must succeed. */
static void expect_ok_subst(const char *tmpl, const char *val, struct tun_ctl_msg *m)
{
	char *json = subst(tmpl, val);

	expect_ok(json, m);
	free(json);
}

static void expect_fail_subst(const char *tmpl, const char *val, const char *want)
{
	char *json = subst(tmpl, val);

	expect_fail(json, SR_EPROTO, want);
	free(json);
}

static void test_over_long_strings(void **state)
{
	/* pre: bytes of the value that the template holds before its "@" */
	static const struct {
		const char *fmt, *field;
		size_t max;
		size_t off;
		size_t pre;
	} cases[] = {
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"@\",\"roles\":[\"driver\"]}", "app",
	     TUN_CTL_APP_MAX, offsetof(struct tun_ctl_msg, app), 0},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
	     "\"token\":\"@\"}",
	     "token", TUN_CTL_TOKEN_MAX, offsetof(struct tun_ctl_msg, token), 0},
	    {"{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
	     "\"resume\":\"@\"}",
	     "resume", TUN_CTL_RESUME_MAX, offsetof(struct tun_ctl_msg, resume), 0},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-@\",\"host\":\"h\","
	     "\"ports\":{\"driver\":1},\"ttl\":1,\"resume\":\"r\"}",
	     "lease", TUN_CTL_LEASE_MAX, offsetof(struct tun_ctl_msg, lease), 2},
	    {"{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\","
	     "\"ports\":{\"driver\":1},\"ttl\":1,\"resume\":\"@\"}",
	     "resume", TUN_CTL_RESUME_MAX, offsetof(struct tun_ctl_msg, resume), 0},
	    {"{\"v\":1,\"type\":\"error\",\"code\":\"@\"}", "code", TUN_CTL_CODE_MAX,
	     offsetof(struct tun_ctl_msg, code), 0},
	    {"{\"v\":1,\"type\":\"error\",\"code\":\"c\",\"message\":\"@\"}", "message",
	     TUN_CTL_TEXT_MAX, offsetof(struct tun_ctl_msg, message), 0},
	};

	for (size_t i = 0; i < SR_ARRAY_LEN(cases); i++) {
		struct tun_ctl_msg m;
		char err[256] = "", want[64];

		/* max-1 bytes fit (with the NUL) and arrive whole. */
		assert_int_equal(parse_with_len(cases[i].fmt, cases[i].max - 1 - cases[i].pre, &m,
						err, sizeof(err)),
				 0);
		assert_int_equal(strlen((const char *)&m + cases[i].off), cases[i].max - 1);

		assert_int_equal(parse_with_len(cases[i].fmt, cases[i].max - cases[i].pre, &m, err,
						sizeof(err)),
				 SR_EPROTO);
		snprintf(want, sizeof(want), "field \"%s\": too long", cases[i].field);
		if (strstr(err, want) == NULL)
			fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, want);
		assert_int_equal(parse_with_len(cases[i].fmt, 10000, &m, NULL, 0), SR_EPROTO);
	}

	/* A host is at most 253 bytes of name (the field would hold 255): past
	 * the field it is too long, in between it is no host name. */
	static const char host_tmpl[] = "{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\","
					"\"host\":\"@\",\"ports\":{\"driver\":1},\"ttl\":1,"
					"\"resume\":\"r\"}";
	char host[TUN_CTL_HOST_MAX + 1];
	struct tun_ctl_msg hm;
	memset(host, 'a', sizeof(host));
	host[63] = host[127] = host[191] = '.';
	host[253] = '\0';
	expect_ok_subst(host_tmpl, host, &hm);
	assert_int_equal(strlen(hm.host), 253);
	host[253] = 'a', host[254] = '\0';
	expect_fail_subst(host_tmpl, host, "field \"host\": not a host name");
	host[254] = 'a', host[TUN_CTL_HOST_MAX] = '\0';
	expect_fail_subst(host_tmpl, host, "field \"host\": too long");

	/* Multi-byte UTF-8 counts in bytes: 64 x "é" = 128 bytes > 127. */
	char json[512];
	int n = snprintf(json, sizeof(json),
			 "{\"v\":1,\"type\":\"register\",\"roles\":[\"ui\"],"
			 "\"app\":\"");
	for (int i = 0; i < 64; i++)
		n += snprintf(json + n, sizeof(json) - (size_t)n, "\xc3\xa9");
	snprintf(json + n, sizeof(json) - (size_t)n, "\"}");
	expect_fail(json, SR_EPROTO, "field \"app\": too long");
}

static void test_bad_ports(void **state)
{
	static const char *const bad[] = {
	    "0",       "65536", "\"40001\"", "-1",  "1.5",
	    "40001.0", "true",	"null",	     "[1]", "9223372036854775807"};
	static const char tmpl[] = "{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\","
				   "\"ttl\":1,\"resume\":\"r\",\"ports\":{\"blockManager\":2,"
				   "\"driver\":@}}";
	struct tun_ctl_msg m;

	for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++)
		expect_fail_subst(tmpl, bad[i],
				  "field \"ports.driver\": must be an integer 1..65535");
	expect_ok_subst(tmpl, "1", &m);
	assert_int_equal(m.ports[TUN_PORT_DRIVER], 1);
	assert_int_equal(m.ports[TUN_PORT_BLOCKMANAGER], 2);
	assert_int_equal(m.ports[TUN_PORT_UI], 0);
	expect_ok_subst(tmpl, "65535", &m);
	assert_int_equal(m.ports[TUN_PORT_DRIVER], 65535);
}

static void test_ttl_bounds(void **state)
{
	static const char tmpl[] = "{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\","
				   "\"ports\":{\"driver\":1},\"resume\":\"r\",\"ttl\":@}";
	static const char *const bad[] = {"-1",	    "4294967296", "\"300\"", "1.5",
					  "false", "604801",	  "4294967295"};
	struct tun_ctl_msg m;
	struct evbuffer *buf = evbuffer_new();

	for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++)
		expect_fail_subst(tmpl, bad[i], "field \"ttl\": must be an integer 0..604800");
	/* at most seven days */
	expect_ok_subst(tmpl, "604800", &m);
	assert_int_equal(m.ttl_s, TUN_CTL_TTL_MAX);
	m.ttl_s = TUN_CTL_TTL_MAX + 1;
	assert_non_null(buf);
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL);
	assert_int_equal(evbuffer_get_length(buf), 0);
	evbuffer_free(buf);
}

static void test_unknown_role(void **state)
{
	expect_fail(
	    "{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\",\"shell\"]}",
	    SR_EPROTO, "field \"roles[1]\": unknown role \"shell\"");
	expect_fail("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"Driver\"]}",
		    SR_EPROTO, "field \"roles[0]\": unknown role");
	expect_fail("{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
		    "\"resume\":\"r\",\"ports\":{\"ssh\":22}}",
		    SR_EPROTO, "field \"ports.ssh\": unknown role");
	expect_fail("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[1]}", SR_EPROTO,
		    "field \"roles[0]\": must be a string");
	expect_fail("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[]}", SR_EPROTO,
		    "field \"roles\": must list at least one role");
	expect_fail("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":\"driver\"}",
		    SR_EPROTO, "field \"roles\": must be an array");
}

static void test_duplicate_role(void **state)
{
	expect_fail("{\"v\":1,\"type\":\"register\",\"app\":\"a\","
		    "\"roles\":[\"driver\",\"ui\",\"driver\"]}",
		    SR_EPROTO, "field \"roles[2]\": duplicate role \"driver\"");

	struct tun_ctl_msg m;
	expect_ok("{\"v\":1,\"type\":\"register\",\"app\":\"a\","
		  "\"roles\":[\"ui\",\"blockManager\",\"driver\"]}",
		  &m);
	assert_int_equal(m.roles, TUN_ROLE_BIT(TUN_PORT_DRIVER) |
				      TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) |
				      TUN_ROLE_BIT(TUN_PORT_UI));
}

static void test_unknown_keys_ignored(void **state)
{
	struct tun_ctl_msg m;

	expect_ok("{\"future\":{\"x\":[1,2,{\"y\":null}]},\"v\":1,\"type\":\"register\","
		  "\"app\":\"nb-1\",\"roles\":[\"driver\"],\"priority\":9}",
		  &m);
	assert_int_equal(m.type, TUN_CTL_REGISTER);
	assert_string_equal(m.app, "nb-1");
	assert_int_equal(m.roles, TUN_ROLE_BIT(TUN_PORT_DRIVER));
	/* Fields of another type are ignored too, even if invalid for it. */
	expect_ok("{\"v\":1,\"type\":\"drain\",\"ports\":{\"x\":0},\"app\":5}", &m);
	assert_int_equal(m.type, TUN_CTL_DRAIN);
	assert_int_equal(m.ports[TUN_PORT_DRIVER], 0);
	assert_string_equal(m.app, "");
}

/* Each contract of tun_ctl.h, value by value: the parser refuses the message
 * with an error that names the field and never quotes the value, and the
 * encoder refuses to send the same value. */
struct rule_case {
	const char *val; /* JSON string contents (escapes allowed) */
	int ok;
};

static void check_rule(const char *tmpl, const char *field, const struct rule_case *cases,
		       size_t n, enum tun_ctl_type type, size_t off, size_t size)
{
	for (size_t i = 0; i < n; i++) {
		struct tun_ctl_msg m;
		char err[256] = "", want[64];
		char *json = subst(tmpl, cases[i].val);
		int rc = parse_json(json, &m, err, sizeof(err));

		if (cases[i].ok && rc != 0)
			fail_msg("%s \"%s\": refused (%s)", field, cases[i].val, err);
		if (!cases[i].ok) {
			snprintf(want, sizeof(want), "field \"%s\": ", field);
			if (rc != SR_EPROTO || strstr(err, want) == NULL)
				fail_msg("%s \"%s\": got %d \"%s\", want a refusal", field,
					 cases[i].val, rc, err);
			if (strstr(err, "spark") || strchr(err, '\n') || strchr(err, '\r'))
				fail_msg("%s: error quotes the value: %s", field, err);
		}
		free(json);
	}
	/* The encoder: a valid message with the raw value put in. */
	for (size_t i = 0; i < n; i++) {
		struct evbuffer *buf = evbuffer_new();
		struct tun_ctl_msg m;
		json_t *js;
		char *q;
		int rc;

		assert_non_null(buf);
		memset(&m, 0, sizeof(m));
		m.type = type;
		snprintf(m.app, sizeof(m.app), "a");
		m.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
		snprintf(m.lease, sizeof(m.lease), "L-1");
		snprintf(m.host, sizeof(m.host), "h");
		m.ports[TUN_PORT_DRIVER] = 1;
		snprintf(m.code, sizeof(m.code), "c");
		/* the JSON escapes of the case, decoded by jansson */
		q = malloc(strlen(cases[i].val) + 3);
		assert_non_null(q);
		snprintf(q, strlen(cases[i].val) + 3, "\"%s\"", cases[i].val);
		js = json_loads(q, JSON_DECODE_ANY, NULL);
		free(q);
		if (js == NULL || json_string_length(js) >= size) {
			json_decref(js);
			evbuffer_free(buf);
			continue; /* not representable in the field */
		}
		memcpy((char *)&m + off, json_string_value(js), json_string_length(js) + 1);
		json_decref(js);
		rc = tun_ctl_encode(&m, buf);
		if (cases[i].ok ? rc != 0 : rc != SR_EINVAL)
			fail_msg("encode %s \"%s\": got %d", field, cases[i].val, rc);
		if (!cases[i].ok)
			assert_int_equal(evbuffer_get_length(buf), 0);
		evbuffer_free(buf);
	}
}

#define LEASE_TMPL(lease, host, resume)                                                        \
	"{\"v\":1,\"type\":\"lease\",\"lease\":\"" lease "\",\"host\":\"" host                 \
	"\",\"ports\":{\"driver\":1},\"ttl\":1,\"resume\":\"" resume "\"}"

static void test_rule_lease_id(void **state)
{
	static const struct rule_case cases[] = {
	    {"L-1", 1},
	    {"L-7-0a1b2c3d", 1},
	    {"L-Z-z-9", 1},
	    {"L-123456789012345678901234567890123456789012345", 1}, /* 45 after "L-" */
	    {"L-", 0},
	    {"L", 0},
	    {"l-1", 0},
	    {"X-1", 0},
	    {"-L-1", 0},
	    {"L-1\\n", 0},
	    {"L-1\\r", 0},
	    {"L-1\\nspark.jars http://evil/x.jar", 0},
	    {"L-1\\r\\nspark.driver.extraJavaOptions -Dx", 0},
	    {"L-1 x", 0},
	    {"L-1\\t", 0},
	    {"L-1_2", 0},
	    {"L-1.2", 0},
	    {"L-1=x", 0},
	    {"L-\\u00e9", 0},
	    {"L-1\\u001b[2J", 0},
	};

	check_rule(LEASE_TMPL("@", "h", "r"), "lease", cases, SR_ARRAY_LEN(cases), TUN_CTL_LEASE,
		   offsetof(struct tun_ctl_msg, lease), TUN_CTL_LEASE_MAX);
	assert_true(tun_ctl_valid_lease_id("L-7-0a1b2c3d"));
	assert_false(tun_ctl_valid_lease_id("L-1\n"));
	assert_false(tun_ctl_valid_lease_id(NULL));
	/* 46 after the prefix: one over the field */
	expect_fail(LEASE_TMPL("L-1234567890123456789012345678901234567890123456", "h", "r"),
		    SR_EPROTO, "field \"lease\": too long");
}

static void test_rule_host(void **state)
{
	static const struct rule_case cases[] = {
	    {"relay-0.spark.svc.cluster.local", 1},
	    {"h", 1},
	    {"relay.example.", 1},
	    {"127.0.0.2", 1},
	    {"10.0.0.1", 1},
	    {"::1", 1},
	    {"fd00::5:1", 1},
	    {"relay\\n", 0},
	    {"relay\\nspark.jars http://evil/x.jar", 0},
	    {"10.0.0.1\\r\\nspark.plugins x", 0},
	    {"relay example", 0},
	    {"relay\\t", 0},
	    {"a..b", 0},
	    {"-relay", 0},
	    {"relay-", 0},
	    {"[::1]", 0},
	    {"10.0.0.1:80", 0},
	    {"relay_0", 0},
	    {"relay/x", 0},
	    {"relay=x", 0},
	    {"r\\u00e9lay", 0},
	    {"relay\\u001b]0;x\\u0007", 0},
	    {"", 0},
	};

	check_rule(LEASE_TMPL("L-1", "@", "r"), "host", cases, SR_ARRAY_LEN(cases), TUN_CTL_LEASE,
		   offsetof(struct tun_ctl_msg, host), TUN_CTL_HOST_MAX);
}

static void test_rule_resume(void **state)
{
	static const struct rule_case cases[] = {
	    {"r", 1},
	    {"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", 1},
	    {"Ab_-9", 1},
	    {"r\\n", 0},
	    {"r x", 0},
	    {"r.x", 0},
	    {"r=x", 0},
	    {"r/x", 0},
	    {"r\\\"", 0},
	    {"\\u00e9", 0},
	};

	check_rule(LEASE_TMPL("L-1", "h", "@"), "resume", cases, SR_ARRAY_LEN(cases),
		   TUN_CTL_LEASE, offsetof(struct tun_ctl_msg, resume), TUN_CTL_RESUME_MAX);
	check_rule("{\"v\":1,\"type\":\"register\",\"app\":\"a\",\"roles\":[\"driver\"],"
		   "\"resume\":\"@\"}",
		   "resume", cases, SR_ARRAY_LEN(cases), TUN_CTL_REGISTER,
		   offsetof(struct tun_ctl_msg, resume), TUN_CTL_RESUME_MAX);
	/* empty: no token (a lease that cannot be resumed, a fresh register) */
	struct tun_ctl_msg m;
	expect_ok(LEASE_TMPL("L-1", "h", ""), &m);
	assert_string_equal(m.resume, "");
}

static void test_rule_code(void **state)
{
	static const struct rule_case cases[] = {
	    {"no_ports", 1}, {"unknown_lease", 1}, {"x9", 1},	 {"No_ports", 0},
	    {"no-ports", 0}, {"no ports", 0},	    {"a\\nb", 0}, {"\\u00e9", 0},
	};

	check_rule("{\"v\":1,\"type\":\"error\",\"code\":\"@\",\"message\":\"m\"}", "code", cases,
		   SR_ARRAY_LEN(cases), TUN_CTL_ERROR, offsetof(struct tun_ctl_msg, code),
		   TUN_CTL_CODE_MAX);
}

static void test_rule_app(void **state)
{
	static const struct rule_case cases[] = {
	    {"nb-1", 1},
	    {"app \\u00e9t\\u00e9 \\\"q\\\" \\\\ / {}", 1},
	    {"\\u4e2d\\u6587", 1},
	    {"a\\nb", 0},
	    {"a\\rb", 0},
	    {"a\\tb", 0},
	    {"\\u001b[31mred", 0},
	    {"a\\u007f", 0},
	    {"a\\u0085b", 0}, /* NEL */
	    {"a\\u009b31m", 0}, /* CSI */
	};

	check_rule("{\"v\":1,\"type\":\"register\",\"app\":\"@\",\"roles\":[\"driver\"]}", "app",
		   cases, SR_ARRAY_LEN(cases), TUN_CTL_REGISTER, offsetof(struct tun_ctl_msg, app),
		   TUN_CTL_APP_MAX);
	assert_false(tun_ctl_valid_app("bad\xff utf8"));
	assert_false(tun_ctl_valid_app("\xc0\xaf")); /* overlong '/' */
	assert_false(tun_ctl_valid_app("\xed\xa0\x80")); /* surrogate */
	assert_false(tun_ctl_valid_app("\xe4\xb8")); /* cut */
	assert_true(tun_ctl_valid_app("\xf0\x9f\x98\x80"));
}

/* The error message is free text: kept as sent, escaped where it is shown. */
static void test_message_is_free_text(void **state)
{
	struct tun_ctl_msg m;

	expect_ok("{\"v\":1,\"type\":\"error\",\"code\":\"c\",\"message\":\"a\\nb\\u001b\"}", &m);
	assert_string_equal(m.message, "a\nb\x1b");
}

static void test_ports_distinct(void **state)
{
	struct evbuffer *buf = evbuffer_new();
	struct tun_ctl_msg m;

	expect_fail("{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
		    "\"resume\":\"r\",\"ports\":{\"driver\":40001,\"blockManager\":40001}}",
		    SR_EPROTO, "field \"ports\": \"driver\" and \"blockManager\" share port 40001");
	expect_fail("{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
		    "\"resume\":\"r\",\"ports\":{\"driver\":1,\"blockManager\":2,\"ui\":1}}",
		    SR_EPROTO, "share port 1");
	expect_ok("{\"v\":1,\"type\":\"lease\",\"lease\":\"L-1\",\"host\":\"h\",\"ttl\":1,"
		  "\"resume\":\"r\",\"ports\":{\"driver\":1,\"blockManager\":2,\"ui\":3}}",
		  &m);
	assert_non_null(buf);
	m.ports[TUN_PORT_UI] = 2;
	assert_int_equal(tun_ctl_encode(&m, buf), SR_EINVAL);
	assert_int_equal(evbuffer_get_length(buf), 0);
	evbuffer_free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip_register),
	    cmocka_unit_test(test_round_trip_lease),
	    cmocka_unit_test(test_round_trip_error),
	    cmocka_unit_test(test_round_trip_bare_types),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_encode_refuses_what_parse_refuses),
	    cmocka_unit_test(test_fragmented_decodes_once),
	    cmocka_unit_test(test_two_frames_in_order),
	    cmocka_unit_test(test_oversize_prefix_too_big),
	    cmocka_unit_test(test_zero_length),
	    cmocka_unit_test(test_decode_bad_body_drains_that_frame),
	    cmocka_unit_test(test_malformed_json),
	    cmocka_unit_test(test_malformed_json_message_is_masked),
	    cmocka_unit_test(test_non_object),
	    cmocka_unit_test(test_duplicate_keys),
	    cmocka_unit_test(test_version),
	    cmocka_unit_test(test_type),
	    cmocka_unit_test(test_missing_required),
	    cmocka_unit_test(test_over_long_strings),
	    cmocka_unit_test(test_bad_ports),
	    cmocka_unit_test(test_ttl_bounds),
	    cmocka_unit_test(test_unknown_role),
	    cmocka_unit_test(test_duplicate_role),
	    cmocka_unit_test(test_unknown_keys_ignored),
	    cmocka_unit_test(test_rule_lease_id),
	    cmocka_unit_test(test_rule_host),
	    cmocka_unit_test(test_rule_resume),
	    cmocka_unit_test(test_join),
	    cmocka_unit_test(test_rule_code),
	    cmocka_unit_test(test_rule_app),
	    cmocka_unit_test(test_message_is_free_text),
	    cmocka_unit_test(test_ports_distinct),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
