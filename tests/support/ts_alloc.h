/* Test support: fail the Nth allocation, to check that a constructor
 * unwinds cleanly (returns an error, frees what it built, does not crash).
 *
 * Every unit test is linked with -Wl,--wrap for malloc, calloc, realloc,
 * strdup and strndup (the calls from our static libraries and the test),
 * and for the library constructors that take no allocator of ours, each of
 * which counts as one allocation: nghttp2's callbacks, option and session
 * constructors and the submit calls a new session makes, OpenSSL's
 * SSL_CTX_new, SSL_new and BIO_new, and jansson's json_loadb, json_loads
 * and json_load_file. ts_alloc_init() also routes libevent's and
 * jansson's own allocations through the counter. OpenSSL's internal
 * allocations are not failed: a failure inside its one-time global set-up
 * would poison every later attempt, and what it leaks then is not ours.
 * Unarmed, every wrapper passes straight through to the real function. */
#ifndef TS_ALLOC_H
#define TS_ALLOC_H

/* Route libevent's and jansson's allocations through the counter. Call
 * first in main, before any libevent or jansson call. */
void ts_alloc_init(void);

/* The nth counted allocation from now fails (returns NULL or the library's
 * out-of-memory code); only that one. */
void ts_alloc_arm(unsigned long n);
/* The same, but libevent's and jansson's own allocations are not counted,
 * for code whose library cannot take a failure: inside the event loop
 * libevent may lose a callback for good (evdns drops a reply whose deferred
 * callback it cannot allocate), and jansson 2.14 can crash inside json_loadb
 * when one of its allocations fails mid-parse. */
void ts_alloc_arm_ours(unsigned long n);
/* Stop counting. Returns 1 if the armed failure happened, else 0. */
int ts_alloc_disarm(void);
/* Counted allocations since the last ts_alloc_arm(). */
unsigned long ts_alloc_count(void);
/* Whether the failed allocation of the last armed run was made with the
 * function fn (by name, inlined callers included) on the stack: 1 or 0, or
 * -1 where nothing can tell (builds without AddressSanitizer). For tests
 * that tolerate one known open bug at the place it is made. */
int ts_alloc_failed_in(const char *fn);

/* One attempt of a sweep: set up what the constructor needs, then
 * ts_alloc_arm(n), call the constructor, ts_alloc_disarm(), check its
 * result, and free what it returned (unarmed). Return 0 if the
 * constructor succeeded, a negative code if it refused. */
typedef int (*ts_alloc_fn)(void *arg, unsigned long n);

struct ts_alloc_result {
	unsigned long allocs;	      /* counted allocations: attempts with one failed */
	unsigned long absorbed;	      /* of those, attempts that succeeded all the same */
	unsigned long first_absorbed; /* n of the first of them, 0 if none */
};

/* fn for n = 1, 2, ... until an attempt runs without a failure injected;
 * after each attempt (ASan builds) no memory may be left unreachable. The
 * test fails, naming `what` and n, if fn refuses without a failure, if a
 * leak is found, or after 100,000 attempts. A crash names n on stderr (set
 * SR_TEST_ALLOC_TRACE=n, or n@name for sweeps whose name contains name,
 * to print where allocation n is made). Prints a
 * summary line to stderr; SR_TEST_ALLOC_VERBOSE=1 also says where each
 * failure was that the constructor went on without. */
void ts_alloc_sweep(const char *what, ts_alloc_fn fn, void *arg, struct ts_alloc_result *res);

#endif
