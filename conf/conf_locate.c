/* Where a value sits in the JSON text. jansson keeps no positions in the
 * tree it builds, so value errors ("port_min out of range") find their line
 * and column with this small scanner over text that jansson has already
 * accepted (so it can skip without validating). */
#include "conf/conf_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct conf_scan {
	const char *p, *end;
	int line, col; /* of *p; col counts characters, as jansson does */
};

static void conf_adv(struct conf_scan *s)
{
	if (s->p >= s->end)
		return;
	if (*s->p == '\n') {
		s->line++;
		s->col = 1;
	} else if (((unsigned char)*s->p & 0xC0) != 0x80) {
		s->col++;
	}
	s->p++;
}

/* conf_adv counts a character when its lead byte is consumed; a column
 * points at the character about to be read. */
static void conf_ws(struct conf_scan *s)
{
	while (s->p < s->end &&
	       (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
		conf_adv(s);
}

/* At '"': move past the closing quote. Sets *raw and *rawlen to the bytes between
 * the quotes and *escaped if they hold a backslash. */
static int conf_skip_string(struct conf_scan *s, const char **raw, size_t *rawlen, int *escaped)
{
	const char *start;

	*escaped = 0;
	conf_adv(s);
	start = s->p;
	while (s->p < s->end && *s->p != '"') {
		if (*s->p == '\\') {
			*escaped = 1;
			conf_adv(s);
		}
		conf_adv(s);
	}
	if (s->p >= s->end)
		return -1;
	*raw = start;
	*rawlen = (size_t)(s->p - start);
	conf_adv(s);
	return 0;
}

static int conf_skip_value(struct conf_scan *s)
{
	const char *raw;
	size_t rawlen;
	int esc, depth = 0;

	do {
		if (s->p >= s->end)
			return -1;
		switch (*s->p) {
		case '"':
			if (conf_skip_string(s, &raw, &rawlen, &esc) != 0)
				return -1;
			continue;
		case '{':
		case '[':
			depth++;
			break;
		case '}':
		case ']':
			depth--;
			break;
		default:
			if (depth == 0) {
				/* a number or literal: up to the next delimiter */
				while (s->p < s->end && !strchr(",]} \t\r\n", *s->p))
					conf_adv(s);
				return 0;
			}
		}
		conf_adv(s);
	} while (depth > 0);
	return 0;
}

/* Does the key between the quotes, raw as written, name seg? A key with
 * escapes ("por\u0074_min") is decoded by jansson, which accepted it. */
static int conf_key_is(const char *raw, size_t rawlen, int escaped, const char *seg)
{
	json_t *key;
	char *quoted;
	int same;

	if (!escaped)
		return rawlen == strlen(seg) && memcmp(raw, seg, rawlen) == 0;
	if (!(quoted = malloc(rawlen + 2)))
		return 0;
	quoted[0] = '"';
	memcpy(quoted + 1, raw, rawlen);
	quoted[rawlen + 1] = '"';
	key = json_loadb(quoted, rawlen + 2, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	free(quoted);
	same = json_is_string(key) && json_string_length(key) == strlen(seg) &&
	       memcmp(json_string_value(key), seg, json_string_length(key)) == 0;
	json_decref(key);
	return same;
}

static int conf_scan_find(struct conf_scan *s, const char *const *segs, size_t nsegs,
			  int want_key)
{
	const char *raw;
	size_t rawlen, index, i;
	int esc, kline, kcol;

	conf_ws(s);
	if (nsegs == 0)
		return s->p < s->end ? 0 : -1;
	if (s->p < s->end && *s->p == '{') {
		conf_adv(s);
		for (;;) {
			conf_ws(s);
			if (s->p >= s->end || *s->p != '"')
				return -1; /* '}' or junk: not here */
			kline = s->line;
			kcol = s->col;
			if (conf_skip_string(s, &raw, &rawlen, &esc) != 0)
				return -1;
			conf_ws(s);
			if (s->p >= s->end || *s->p != ':')
				return -1;
			conf_adv(s);
			if (conf_key_is(raw, rawlen, esc, segs[0])) {
				if (nsegs == 1 && want_key) {
					s->line = kline;
					s->col = kcol;
					return 0;
				}
				return conf_scan_find(s, segs + 1, nsegs - 1, want_key);
			}
			conf_ws(s);
			if (conf_skip_value(s) != 0)
				return -1;
			conf_ws(s);
			if (s->p >= s->end || *s->p != ',')
				return -1;
			conf_adv(s);
		}
	}
	if (s->p < s->end && *s->p == '[' && segs[0][0] == '[') {
		char *endp;

		index = strtoul(segs[0] + 1, &endp, 10);
		if (*endp != ']')
			return -1;
		conf_adv(s);
		for (i = 0;; i++) {
			conf_ws(s);
			if (i == index && s->p < s->end && *s->p != ']')
				return conf_scan_find(s, segs + 1, nsegs - 1, want_key);
			if (s->p >= s->end || *s->p == ']' || conf_skip_value(s) != 0)
				return -1;
			conf_ws(s);
			if (s->p >= s->end || *s->p != ',')
				return -1;
			conf_adv(s);
		}
	}
	return -1;
}

int conf_locate(const char *text, size_t len, const char *const *segs, size_t nsegs,
		int want_key, int *line, int *col)
{
	struct conf_scan s = {text, text + len, 1, 1};

	if (conf_scan_find(&s, segs, nsegs, want_key) != 0)
		return -1;
	*line = s.line;
	*col = s.col;
	return 0;
}
