/* libFuzzer target for the configuration loader (conf/conf.c): the JSON
 * file and the SPARKRELAY_* environment overrides, applied together as
 * `sparkrelay relay|tunnel|check-config` does.
 *
 * Input: the file body, then optionally a NUL byte and up to FZ_MAX_ENV
 * variables separated by NUL bytes, each "SUFFIX=VALUE"; the name set is
 * "SPARKRELAY_" + SUFFIX (so every input stays in our namespace, and the
 * seeds show the fuzzer real key names). Variables are removed after each
 * input.
 *
 * Checked on every input, as users rely on it:
 *   - an error is one NUL-terminated line without control bytes (it goes to
 *     logs, terminals and HTTP answers) and leaves the config empty;
 *   - a configuration that loads is dumped, and the dump loads again (with
 *     the same environment) and dumps to the same text: the loader accepts
 *     what it prints. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "conf/conf.h"

#define FZ_MAX_ENV 8
#define FZ_MAX_VALUE 4096
#define FZ_ERRLEN 1024

static char *fz_names[FZ_MAX_ENV];
static size_t fz_nnames;

static void fz_env_clear(void)
{
	for (size_t i = 0; i < fz_nnames; i++) {
		unsetenv(fz_names[i]);
		free(fz_names[i]);
		fz_names[i] = NULL;
	}
	fz_nnames = 0;
}

/* One "SUFFIX=VALUE" entry (len bytes, no NUL inside). */
static void fz_env_set(const char *p, size_t len)
{
	const char *eq = memchr(p, '=', len);
	size_t nlen, vlen;
	char *name, *value;

	if (!eq || fz_nnames >= FZ_MAX_ENV)
		return;
	nlen = (size_t)(eq - p);
	vlen = len - nlen - 1;
	if (vlen > FZ_MAX_VALUE)
		vlen = FZ_MAX_VALUE;
	name = malloc(sizeof(CONF_ENV_PREFIX) + nlen);
	value = malloc(vlen + 1);
	if (!name || !value) {
		free(name);
		free(value);
		return;
	}
	memcpy(name, CONF_ENV_PREFIX, sizeof(CONF_ENV_PREFIX) - 1);
	memcpy(name + sizeof(CONF_ENV_PREFIX) - 1, p, nlen);
	name[sizeof(CONF_ENV_PREFIX) - 1 + nlen] = '\0';
	memcpy(value, eq + 1, vlen);
	value[vlen] = '\0';
	if (setenv(name, value, 1) == 0)
		fz_names[fz_nnames++] = name;
	else
		free(name);
	free(value);
}

static void fz_check_error(int rc, const char *err, const struct sr_config *cfg)
{
	static const struct sr_config zero;
	size_t n = strnlen(err, FZ_ERRLEN);

	if (rc >= 0) {
		fprintf(stderr, "failed load returned %d\n", rc);
		abort();
	}
	if (n == 0 || n >= FZ_ERRLEN) {
		fprintf(stderr, "error message empty or not terminated\n");
		abort();
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)err[i];
		if (c < 0x20 || c == 0x7f) {
			fprintf(stderr, "control byte 0x%02x at %zu in the message: %s\n", c, i,
				err);
			abort();
		}
	}
	if (memcmp(cfg, &zero, sizeof(zero)) != 0) {
		fprintf(stderr, "a failed load left the config filled: %s\n", err);
		abort();
	}
}

static char *fz_dump(const struct sr_config *cfg)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	if (conf_dump(cfg, f) != 0) {
		fclose(f);
		free(text);
		return NULL;
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

/* The dump of a loaded config loads again and dumps to the same text. */
static void fz_check_round_trip(const struct sr_config *cfg)
{
	struct sr_config again;
	char err[FZ_ERRLEN] = "";
	char *d1 = fz_dump(cfg), *d2;
	int rc;

	if (!d1)
		return; /* out of memory */
	memset(&again, 0, sizeof(again));
	rc = conf_load_string(d1, "dump", &again, err, sizeof(err));
	if (rc == SR_ENOMEM) {
		free(d1);
		return;
	}
	if (rc != 0) {
		fprintf(stderr, "the dump does not load again: %s\n--- dump:\n%s\n", err, d1);
		abort();
	}
	d2 = fz_dump(&again);
	if (d2 && strcmp(d1, d2) != 0) {
		fprintf(stderr,
			"dump, load, dump changed the text:\n--- first:\n%s\n--- second:\n%s\n",
			d1, d2);
		abort();
	}
	free(d2);
	free(d1);
	conf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *sep = memchr(data, '\0', size);
	size_t jlen = sep ? (size_t)(sep - (const char *)data) : size;
	char err[FZ_ERRLEN];
	struct sr_config cfg;
	char *json;
	int rc;

	if (sep) {
		const char *p = sep + 1, *end = (const char *)data + size;

		while (p < end) {
			const char *z = memchr(p, '\0', (size_t)(end - p));
			size_t len = z ? (size_t)(z - p) : (size_t)(end - p);

			fz_env_set(p, len);
			p += len + 1;
		}
	}
	json = malloc(jlen + 1);
	if (!json) {
		fz_env_clear();
		return 0;
	}
	memcpy(json, data, jlen);
	json[jlen] = '\0';
	memset(err, 'x', sizeof(err)); /* an unterminated message must show */
	memset(&cfg, 0, sizeof(cfg));
	rc = conf_load_string(json, "fuzz.json", &cfg, err, sizeof(err));
	if (rc == 0) {
		fz_check_round_trip(&cfg);
		conf_free(&cfg);
	} else if (rc != SR_ENOMEM) {
		fz_check_error(rc, err, &cfg);
	}
	free(json);
	fz_env_clear();
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	sr_log_set_level(SR_LOG_ERROR);
	/* Start from an environment without our variables: one left over from
	 * the caller would decide every input. */
	for (int again = 1; again;) {
		again = 0;
		for (char **ep = environ; *ep; ep++) {
			if (strncmp(*ep, CONF_ENV_PREFIX, sizeof(CONF_ENV_PREFIX) - 1) == 0) {
				const char *eq = strchr(*ep, '=');
				char *name =
				    strndup(*ep, eq ? (size_t)(eq - *ep) : strlen(*ep));

				if (!name)
					abort();
				unsetenv(name);
				free(name);
				again = 1; /* environ changed: rescan */
				break;
			}
		}
	}
	return 0;
}
