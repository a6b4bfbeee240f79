#include "tests/support/ts_alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <execinfo.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#include <sanitizer/lsan_interface.h>
#define TS_HAVE_ASAN 1
#endif

#define MAX_ATTEMPTS 100000ul

static unsigned long arm_n;   /* 0: not counting */
static unsigned long seen;    /* counted since ts_alloc_arm */
static int skip_libs;	      /* libevent's and jansson's own allocations not counted */
static int injected;	      /* the armed failure happened */
static unsigned long trace_n; /* SR_TEST_ALLOC_TRACE: print where this one is made */
static const char *trace_in;  /* SR_TEST_ALLOC_TRACE=n@text: only in sweeps so named */
static int did_arm;	      /* ts_alloc_arm was called during this attempt */
static void *where[24];	      /* stack of the failed allocation */
static int nwhere;
static int verbose; /* SR_TEST_ALLOC_VERBOSE: say where absorbed ones were */
static const char *sweep_what;
static unsigned long sweep_n;

/* 1 if this allocation is the one to fail. */
static int should_fail(void)
{
	if (!arm_n)
		return 0;
	if (++seen != arm_n)
		return 0;
	injected = 1;
	nwhere = backtrace(where, (int)(sizeof(where) / sizeof(where[0])));
#ifdef TS_HAVE_ASAN
	if (trace_n && trace_n == arm_n &&
	    (!trace_in || (sweep_what && strstr(sweep_what, trace_in)))) {
		fprintf(stderr, "ts_alloc: allocation %lu of %s fails here:\n", arm_n,
			sweep_what ? sweep_what : "?");
		__sanitizer_print_stack_trace();
	}
#endif
	return 1;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t nmemb, size_t n);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t nmemb, size_t n);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

void *__wrap_malloc(size_t n)
{
	return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t nmemb, size_t n)
{
	return should_fail() ? NULL : __real_calloc(nmemb, n);
}

void *__wrap_realloc(void *p, size_t n)
{
	return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
	return should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
	return should_fail() ? NULL : __real_strndup(s, n);
}

/* nghttp2 takes an allocator only through the *_new3 constructors; each of
 * these calls allocates, and fails with NGHTTP2_ERR_NOMEM. */
int __real_nghttp2_session_callbacks_new(nghttp2_session_callbacks **p);
int __real_nghttp2_option_new(nghttp2_option **p);
int __real_nghttp2_session_client_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt);
int __real_nghttp2_session_server_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt);
int __real_nghttp2_submit_settings(nghttp2_session *s, uint8_t flags,
				   const nghttp2_settings_entry *iv, size_t niv);
int __real_nghttp2_session_set_local_window_size(nghttp2_session *s, uint8_t flags, int32_t id,
						 int32_t size);
int32_t __real_nghttp2_submit_request(nghttp2_session *s, const nghttp2_priority_spec *pri,
				      const nghttp2_nv *nva, size_t nvlen,
				      const nghttp2_data_provider *prd, void *user);

int __wrap_nghttp2_session_callbacks_new(nghttp2_session_callbacks **p);
int __wrap_nghttp2_option_new(nghttp2_option **p);
int __wrap_nghttp2_session_client_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt);
int __wrap_nghttp2_session_server_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt);
int __wrap_nghttp2_submit_settings(nghttp2_session *s, uint8_t flags,
				   const nghttp2_settings_entry *iv, size_t niv);
int __wrap_nghttp2_session_set_local_window_size(nghttp2_session *s, uint8_t flags, int32_t id,
						 int32_t size);
int32_t __wrap_nghttp2_submit_request(nghttp2_session *s, const nghttp2_priority_spec *pri,
				      const nghttp2_nv *nva, size_t nvlen,
				      const nghttp2_data_provider *prd, void *user);

int __wrap_nghttp2_session_callbacks_new(nghttp2_session_callbacks **p)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM : __real_nghttp2_session_callbacks_new(p);
}

int __wrap_nghttp2_option_new(nghttp2_option **p)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM : __real_nghttp2_option_new(p);
}

int __wrap_nghttp2_session_client_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM
			     : __real_nghttp2_session_client_new2(p, cb, user, opt);
}

int __wrap_nghttp2_session_server_new2(nghttp2_session **p, const nghttp2_session_callbacks *cb,
				       void *user, const nghttp2_option *opt)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM
			     : __real_nghttp2_session_server_new2(p, cb, user, opt);
}

int __wrap_nghttp2_submit_settings(nghttp2_session *s, uint8_t flags,
				   const nghttp2_settings_entry *iv, size_t niv)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM
			     : __real_nghttp2_submit_settings(s, flags, iv, niv);
}

int __wrap_nghttp2_session_set_local_window_size(nghttp2_session *s, uint8_t flags, int32_t id,
						 int32_t size)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM
			     : __real_nghttp2_session_set_local_window_size(s, flags, id, size);
}

int32_t __wrap_nghttp2_submit_request(nghttp2_session *s, const nghttp2_priority_spec *pri,
				      const nghttp2_nv *nva, size_t nvlen,
				      const nghttp2_data_provider *prd, void *user)
{
	return should_fail() ? NGHTTP2_ERR_NOMEM
			     : __real_nghttp2_submit_request(s, pri, nva, nvlen, prd, user);
}

BIO *__real_BIO_new(const BIO_METHOD *m);
BIO *__wrap_BIO_new(const BIO_METHOD *m);

BIO *__wrap_BIO_new(const BIO_METHOD *m)
{
	return should_fail() ? NULL : __real_BIO_new(m);
}

SSL_CTX *__real_SSL_CTX_new(const SSL_METHOD *m);
SSL *__real_SSL_new(SSL_CTX *ctx);
SSL_CTX *__wrap_SSL_CTX_new(const SSL_METHOD *m);
SSL *__wrap_SSL_new(SSL_CTX *ctx);

SSL_CTX *__wrap_SSL_CTX_new(const SSL_METHOD *m)
{
	return should_fail() ? NULL : __real_SSL_CTX_new(m);
}

SSL *__wrap_SSL_new(SSL_CTX *ctx)
{
	return should_fail() ? NULL : __real_SSL_new(ctx);
}

/* jansson's parsers, each counted as one allocation that fails as jansson
 * reports running out of memory: under ts_alloc_arm_ours they are the only
 * failures jansson sees (2.14 can crash inside json_loadb when one of its
 * own allocations fails mid-parse). */
static void json_oom(json_error_t *e)
{
	if (!e)
		return;
	memset(e, 0, sizeof(*e));
	e->line = e->column = -1;
	snprintf(e->source, sizeof(e->source), "<ts_alloc>");
	snprintf(e->text, sizeof(e->text), "out of memory");
	e->text[JSON_ERROR_TEXT_LENGTH - 1] = (char)json_error_out_of_memory;
}

json_t *__real_json_loadb(const char *b, size_t n, size_t flags, json_error_t *e);
json_t *__real_json_loads(const char *s, size_t flags, json_error_t *e);
json_t *__real_json_load_file(const char *path, size_t flags, json_error_t *e);
json_t *__wrap_json_loadb(const char *b, size_t n, size_t flags, json_error_t *e);
json_t *__wrap_json_loads(const char *s, size_t flags, json_error_t *e);
json_t *__wrap_json_load_file(const char *path, size_t flags, json_error_t *e);

json_t *__wrap_json_loadb(const char *b, size_t n, size_t flags, json_error_t *e)
{
	if (should_fail()) {
		json_oom(e);
		return NULL;
	}
	return __real_json_loadb(b, n, flags, e);
}

json_t *__wrap_json_loads(const char *s, size_t flags, json_error_t *e)
{
	if (should_fail()) {
		json_oom(e);
		return NULL;
	}
	return __real_json_loads(s, flags, e);
}

json_t *__wrap_json_load_file(const char *path, size_t flags, json_error_t *e)
{
	if (should_fail()) {
		json_oom(e);
		return NULL;
	}
	return __real_json_load_file(path, flags, e);
}

/* libevent and jansson call these for every allocation of their own. */
static void *lib_malloc(size_t n)
{
	return !skip_libs && should_fail() ? NULL : __real_malloc(n);
}

static void *lib_realloc(void *p, size_t n)
{
	return !skip_libs && should_fail() ? NULL : __real_realloc(p, n);
}

static void lib_free(void *p)
{
	free(p);
}

void ts_alloc_init(void)
{
	const char *t = getenv("SR_TEST_ALLOC_TRACE");

	trace_n = t ? strtoul(t, NULL, 10) : 0;
	trace_in = t && strchr(t, '@') ? strchr(t, '@') + 1 : NULL;
	verbose = getenv("SR_TEST_ALLOC_VERBOSE") != NULL;
	event_set_mem_functions(lib_malloc, lib_realloc, lib_free);
	json_set_alloc_funcs(lib_malloc, lib_free);
}

void ts_alloc_arm(unsigned long n)
{
	seen = 0;
	injected = 0;
	arm_n = n;
	skip_libs = 0;
	did_arm = 1;
}

void ts_alloc_arm_ours(unsigned long n)
{
	ts_alloc_arm(n);
	skip_libs = 1;
}

int ts_alloc_disarm(void)
{
	arm_n = 0;
	skip_libs = 0;
	return injected;
}

unsigned long ts_alloc_count(void)
{
	return seen;
}

int ts_alloc_failed_in(const char *fn)
{
	if (!injected)
		return 0;
#ifdef TS_HAVE_ASAN
	for (int i = 1; i < nwhere; i++) {
		char buf[1024];

		/* one NUL-terminated name per frame, inlined callers included,
		 * then an empty one */
		memset(buf, 0, sizeof(buf));
		__sanitizer_symbolize_pc(where[i], "%f", buf, sizeof(buf) - 1);
		for (const char *f = buf; *f && f < buf + sizeof(buf); f += strlen(f) + 1)
			if (strcmp(f, fn) == 0)
				return 1;
	}
	return 0;
#else
	(void)fn;
	return -1;
#endif
}

/* The frames above the wrapper of the allocation that failed. */
static void say_where(const char *what, unsigned long n)
{
	fprintf(stderr, "%s: went on with allocation %lu failed, made at:\n", what, n);
	for (int i = 2; i < nwhere && i < 8; i++) {
#ifdef TS_HAVE_ASAN
		char buf[256];

		__sanitizer_symbolize_pc(where[i], "%p %F %L", buf, sizeof(buf));
		fprintf(stderr, "    %s\n", buf);
#else
		fprintf(stderr, "    %p\n", where[i]);
#endif
	}
}

#ifdef TS_HAVE_ASAN
static void on_death(void)
{
	if (sweep_what)
		fprintf(stderr,
			"ts_alloc: the sweep of %s stopped at attempt %lu, with allocation %lu "
			"failed (SR_TEST_ALLOC_TRACE=%lu shows where it is made)\n",
			sweep_what, sweep_n, sweep_n, sweep_n);
}
#endif

void ts_alloc_sweep(const char *what, ts_alloc_fn fn, void *arg, struct ts_alloc_result *res)
{
	struct ts_alloc_result r = {0, 0, 0};
	unsigned long n;
	char why[256] = "";

#ifdef TS_HAVE_ASAN
	__sanitizer_set_death_callback(on_death);
	if (__lsan_do_recoverable_leak_check())
		fail_msg("%s: memory leaked before the sweep (above), by an earlier test",
			 what);
#endif
	sweep_what = what;
	for (n = 1; n <= MAX_ATTEMPTS && !why[0]; n++) {
		int rc, inj;

		sweep_n = n;
		injected = 0;
		seen = 0;
		did_arm = 0;
		rc = fn(arg, n);
		inj = injected;
		if (arm_n) {
			ts_alloc_disarm();
			snprintf(why, sizeof(why), "attempt %lu left the allocator armed", n);
		} else if (!did_arm) {
			snprintf(why, sizeof(why), "attempt %lu never armed the allocator", n);
		}
#ifdef TS_HAVE_ASAN
		else if (__lsan_do_recoverable_leak_check())
			snprintf(
			    why, sizeof(why),
			    "leak with allocation %lu failed (above: where the leaked memory "
			    "was allocated; SR_TEST_ALLOC_TRACE=%lu shows where allocation %lu "
			    "is made)",
			    n, n, n);
#endif
		else if (!inj && rc != 0)
			snprintf(why, sizeof(why), "refused (%d) with no allocation failed",
				 rc);
		else if (!inj)
			break;
		else if (rc == 0) {
			if (r.absorbed++ == 0)
				r.first_absorbed = n;
			if (verbose)
				say_where(what, n);
		}
	}
	sweep_what = NULL;
	if (why[0])
		fail_msg("%s: %s", what, why);
	if (n > MAX_ATTEMPTS)
		fail_msg("%s: still failing after %lu attempts", what, MAX_ATTEMPTS);
	r.allocs = n - 1;
	fprintf(stderr,
		"alloc sweep %s: %lu allocations, each failed once: %lu refused, %lu went on "
		"without it%s\n",
		what, r.allocs, r.allocs - r.absorbed, r.absorbed,
		r.absorbed && !verbose ? " (SR_TEST_ALLOC_VERBOSE=1 says where)" : "");
	if (res)
		*res = r;
}
