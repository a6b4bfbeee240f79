#include "discovery/disc_dns.h"
#include "common/sr_err.h"
#include "common/sr_text.h"

#include <stdio.h>
#include <string.h>

#define HDR 12
#define NAME_WIRE_MAX 255
/* Compression pointers followed in one name. Each must point before the
 * last, so a name cannot loop anyway; this only bounds the work. */
#define PTR_MAX 32
/* CNAMEs followed from the name asked to the SRV records. */
#define CNAME_MAX 8

#define F_QR 0x8000u
#define F_OPCODE 0x7800u
#define F_TC 0x0200u
#define F_RD 0x0100u
#define F_RCODE 0x000fu

static unsigned get16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int label_char(int c, int underscore)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || (underscore && c == '_');
}

int disc_dns_name_ok(const char *name)
{
	size_t n = name ? strlen(name) : 0, label = 0;

	if (n && name[n - 1] == '.')
		n--;
	if (n == 0 || n > DISC_DNS_NAME_TEXT)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (name[i] == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (!label_char((unsigned char)name[i], 1) || ++label > 63) {
			return 0;
		}
	}
	return label > 0;
}

size_t disc_dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype)
{
	size_t o = HDR, n;

	if (cap < DISC_DNS_QUERY_MAX || !disc_dns_name_ok(name))
		return 0;
	n = strlen(name);
	if (name[n - 1] == '.')
		n--;
	memset(buf, 0, HDR);
	buf[0] = (uint8_t)(id >> 8);
	buf[1] = (uint8_t)id;
	buf[2] = F_RD >> 8;
	buf[5] = 1; /* one question */
	for (size_t i = 0; i < n;) {
		size_t l = 0;

		while (i + l < n && name[i + l] != '.')
			l++;
		buf[o++] = (uint8_t)l;
		memcpy(buf + o, name + i, l);
		o += l;
		i += l + 1;
	}
	buf[o++] = 0;
	buf[o++] = (uint8_t)(qtype >> 8);
	buf[o++] = (uint8_t)qtype;
	buf[o++] = 0;
	buf[o++] = 1; /* IN */
	return o;
}

/* Read the name at *off into out (dotted, lower case, no trailing dot; ""
 * for the root), and move *off past it. *odd is set when a label has a byte
 * other than a letter, digit, '-' or '_' (such a name is never used: as
 * text it could not be told apart from another, "a.b" as one label or two).
 * Returns 0, or -1 when the name is malformed. */
static int read_name(const uint8_t *m, size_t len, size_t *off, char *out, int *odd)
{
	size_t p = *off, o = 0, wire = 1, limit = *off;
	int jumped = 0;
	unsigned ptrs = 0;

	*odd = 0;
	for (;;) {
		unsigned l;

		if (p >= len)
			return -1;
		l = m[p];
		if ((l & 0xc0) == 0xc0) {
			size_t to;

			if (p + 1 >= len)
				return -1;
			to = (size_t)(l & 0x3f) << 8 | m[p + 1];
			/* strictly before where this stretch of the name began */
			if (to < HDR || to >= limit || ++ptrs > PTR_MAX)
				return -1;
			if (!jumped)
				*off = p + 2;
			jumped = 1;
			limit = p = to;
			continue;
		}
		if (l & 0xc0) /* 0x40 and 0x80: label types nobody may use */
			return -1;
		if (l == 0)
			break;
		wire += 1 + l;
		if (wire > NAME_WIRE_MAX || p + 1 + l > len)
			return -1;
		if (o)
			out[o++] = '.';
		for (size_t i = 0; i < l; i++) {
			int c = m[p + 1 + i];

			if (!label_char(c, 1))
				*odd = 1;
			out[o++] = (char)lower(c);
		}
		p += 1 + l;
	}
	out[o] = '\0';
	if (!jumped)
		*off = p + 1;
	return 0;
}

static int name_eq(const char *a, const char *b)
{
	for (; *a && *b; a++, b++)
		if (lower((unsigned char)*a) != lower((unsigned char)*b))
			return 0;
	return *a == *b;
}

/* A name asked as text, lower case, without the trailing dot. */
static void canon(const char *in, char *out)
{
	size_t n = strlen(in);

	if (n && in[n - 1] == '.')
		n--;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)lower((unsigned char)in[i]);
	out[n] = '\0';
}

static const char *rcode_name(unsigned rc)
{
	static const char *const names[] = {"NOERROR",	"FORMERR", "SERVFAIL",
					    "NXDOMAIN", "NOTIMP",  "REFUSED"};
	return rc < sizeof(names) / sizeof(names[0]) ? names[rc] : "an unknown rcode";
}

/* A usable target: a host name of letters, digits and '-' (sr_valid_host),
 * which also refuses the empty name. */
static int target_ok(const char *t)
{
	return sr_valid_host(t) && strchr(t, ':') == NULL;
}

static int keep_srv(struct disc_srv_answer *ans, unsigned prio, unsigned weight, unsigned port,
		    uint32_t ttl, const char *target, int odd)
{
	struct disc_srv_rec *r;

	if (odd || !target_ok(target) || port == 0 || ans->n >= DISC_SRV_MAX) {
		ans->skipped++;
		return 0;
	}
	for (size_t i = 0; i < ans->n; i++)
		if (ans->rec[i].port == port && strcmp(ans->rec[i].target, target) == 0) {
			ans->skipped++;
			return 0;
		}
	r = &ans->rec[ans->n++];
	r->priority = (uint16_t)prio;
	r->weight = (uint16_t)weight;
	r->port = (uint16_t)port;
	r->ttl = ttl;
	snprintf(r->target, sizeof(r->target), "%s", target);
	if (ans->n == 1 || ttl < ans->min_ttl)
		ans->min_ttl = ttl;
	return 0;
}

int disc_srv_parse(const uint8_t *msg, size_t len, uint16_t id, const char *name,
		   struct disc_srv_answer *ans, char *err, size_t errlen)
{
	char want[DISC_DNS_NAME_TEXT + 1], cur[DISC_DNS_NAME_TEXT + 1];
	char got[NAME_WIRE_MAX + 1];
	unsigned flags, qd, an, cnames = 0;
	size_t off = HDR;
	int odd;

	memset(ans, 0, sizeof(*ans));
	if (!disc_dns_name_ok(name)) {
		sr_seterr(err, errlen, "bad name asked");
		return SR_EINVAL;
	}
	canon(name, want);
	if (len < HDR) {
		sr_seterr(err, errlen, "answer shorter than a DNS header (%zu bytes)", len);
		return SR_ENOTFOUND;
	}
	flags = get16(msg + 2);
	if (get16(msg) != id || !(flags & F_QR) || (flags & F_OPCODE) != 0) {
		sr_seterr(err, errlen, "not an answer to our query");
		return SR_ENOTFOUND;
	}
	qd = get16(msg + 4);
	an = get16(msg + 6);
	/* The question must be ours, also in a truncated or failed answer. */
	if (qd != 1 || read_name(msg, len, &off, got, &odd) != 0 || odd ||
	    !name_eq(got, want) || off + 4 > len || get16(msg + off) != DISC_DNS_TYPE_SRV ||
	    get16(msg + off + 2) != 1) {
		sr_seterr(err, errlen, "not an answer to our question");
		return SR_ENOTFOUND;
	}
	off += 4;
	if ((flags & F_RCODE) != 0 && (flags & F_RCODE) != DISC_DNS_RCODE_NXDOMAIN) {
		sr_seterr(err, errlen, "the server answered %s (%u)",
			  rcode_name(flags & F_RCODE), flags & F_RCODE);
		return SR_ERESOLVE;
	}
	ans->rcode = (int)(flags & F_RCODE);
	if (flags & F_TC) {
		ans->truncated = 1;
		return 0;
	}
	snprintf(cur, sizeof(cur), "%s", want);
	for (unsigned i = 0; i < an; i++) {
		unsigned type, klass, rdlen;
		uint32_t ttl;
		size_t rd;

		if (off >= len) {
			sr_seterr(err, errlen, "answer record %u of %u runs past the end",
				  i + 1, an);
			goto malformed;
		}
		if (read_name(msg, len, &off, got, &odd) != 0) {
			sr_seterr(err, errlen, "malformed name in answer record %u", i + 1);
			goto malformed;
		}
		if (off + 10 > len) {
			sr_seterr(err, errlen, "answer record %u of %u runs past the end",
				  i + 1, an);
			goto malformed;
		}
		type = get16(msg + off);
		klass = get16(msg + off + 2);
		ttl = get32(msg + off + 4);
		rdlen = get16(msg + off + 8);
		rd = off + 10;
		if (rd + rdlen > len) {
			sr_seterr(err, errlen, "answer record %u: data runs past the end",
				  i + 1);
			goto malformed;
		}
		off = rd + rdlen;
		if (ttl & 0x80000000u) /* RFC 2181 8: such a TTL means zero */
			ttl = 0;
		if (klass != 1 || odd || !name_eq(got, cur))
			continue;
		if (type == DISC_DNS_TYPE_CNAME) {
			size_t t = rd;

			if (read_name(msg, rd + rdlen, &t, got, &odd) != 0 || t != rd + rdlen) {
				sr_seterr(err, errlen, "answer record %u: malformed CNAME",
					  i + 1);
				goto malformed;
			}
			if (odd || !got[0] || ++cnames > CNAME_MAX)
				continue; /* a chain we do not follow: its records stay unused
					   */
			snprintf(cur, sizeof(cur), "%s", got);
		} else if (type == DISC_DNS_TYPE_SRV) {
			size_t t = rd + 6;

			/* The target ends inside this record: read_name is
			 * given the record's end as the end of the message. */
			if (rdlen < 7 || read_name(msg, rd + rdlen, &t, got, &odd) != 0 ||
			    t != rd + rdlen) {
				sr_seterr(err, errlen, "answer record %u: malformed SRV data",
					  i + 1);
				goto malformed;
			}
			if (!got[0]) /* "." : the service is not offered there */
				continue;
			keep_srv(ans, get16(msg + rd), get16(msg + rd + 2), get16(msg + rd + 4),
				 ttl, got, odd);
		}
	}
	return 0;

malformed:
	memset(ans, 0, sizeof(*ans));
	return SR_EPROTO;
}

void disc_srv_order(const struct disc_srv_rec *rec, size_t n, unsigned *order,
		    uint32_t (*rand_below)(uint32_t))
{
	/* Sort by priority, stable; weight-0 records first within a priority,
	 * as RFC 2782 asks before the weighted selection. */
	for (size_t i = 0; i < n; i++)
		order[i] = (unsigned)i;
	for (size_t i = 1; i < n; i++) {
		unsigned v = order[i];
		size_t j = i;

		while (j > 0 && (rec[order[j - 1]].priority > rec[v].priority ||
				 (rec[order[j - 1]].priority == rec[v].priority &&
				  rec[order[j - 1]].weight != 0 && rec[v].weight == 0))) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = v;
	}
	for (size_t start = 0; start < n;) {
		size_t end = start;

		while (end < n && rec[order[end]].priority == rec[order[start]].priority)
			end++;
		/* Pick each place from those left: a number chooses the first
		 * record whose running sum of weights reaches it. RFC 2782 draws
		 * it from [0, sum], which gives the first record one extra
		 * chance; here 0 is drawn only for the weight-0 records at the
		 * front (their small chance), so the others go first in exact
		 * proportion to their weights. All of weight 0: uniform. */
		for (size_t k = start; k + 1 < end; k++) {
			uint32_t sum = 0, r, run = 0;
			size_t pick = k;

			for (size_t j = k; j < end; j++)
				sum += rec[order[j]].weight;
			if (sum == 0)
				r = 0, pick = k + rand_below((uint32_t)(end - k));
			else if (rec[order[k]].weight == 0)
				r = rand_below(sum + 1);
			else
				r = 1 + rand_below(sum);
			for (size_t j = k; sum && j < end; j++) {
				run += rec[order[j]].weight;
				if (run >= r) {
					pick = j;
					break;
				}
			}
			unsigned v = order[pick];
			memmove(order + k + 1, order + k, (pick - k) * sizeof(*order));
			order[k] = v;
		}
		start = end;
	}
}
