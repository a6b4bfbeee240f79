/* Failed allocations in the tunnel's constructors: for n = 1, 2, ... the nth
 * allocation fails (tests/support/ts_alloc.h), and each constructor must
 * return an error, free what it had built and call nobody back; with ASan,
 * no memory may be left unreachable after any attempt. Then a whole tunnel
 * bring-up (TLS handshake, both sessions, the control stream) with one
 * allocation failing at a time must end, on each side, either up or with
 * one on_closed, never hang or crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/sr_bsock.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "sidecar/sidecar.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pki.h"
#include "tests/support/ts_sys.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_endpoint.h"
#include "tunnel/tun_tls.h"

/* A failure is reported by the code that meets it, at once: a tunnel must
 * be up or closed well before its handshake timeout could close it. */
#define UP_WAIT_MS 2000
#define HANDSHAKE_TIMEOUT_MS 5000

static struct ts_pki pki;

struct fx {
	struct event_base *base;
	SSL_CTX *sctx, *cctx;
	int calls; /* owner callbacks of any kind */
};

/* Callbacks that only count: none may run inside a constructor. */
static void on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	((struct fx *)arg)->calls++;
}

static void on_ctl_open(struct tun_conn *c, void *arg)
{
	((struct fx *)arg)->calls++;
}

static struct sr_bsock *on_connect(struct tun_conn *c, const struct tun_connect_req *r,
				      void *arg)
{
	((struct fx *)arg)->calls++;
	return NULL;
}

static void on_output(struct tun_conn *c, void *arg)
{
	((struct fx *)arg)->calls++;
}

static void on_closed(struct tun_conn *c, int err, void *arg)
{
	((struct fx *)arg)->calls++;
}

static const struct tun_conn_cbs conn_cbs = {
    .on_ctl = on_ctl,
    .on_ctl_open = on_ctl_open,
    .on_connect = on_connect,
    .on_output = on_output,
    .on_closed = on_closed,
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char err[512];

	assert_non_null(f);
	assert_non_null(f->base = event_base_new());
	f->sctx = tun_tls_server_ctx(pki.relay_pem, pki.relay_key, NULL, 0, err, sizeof(err));
	f->cctx = tun_tls_client_ctx(pki.ca, NULL, NULL, err, sizeof(err));
	if (!f->sctx || !f->cctx)
		fail_msg("TLS contexts: %s", err);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	ts_loop_run_for(f->base, 5); /* deferred frees */
	SSL_CTX_free(f->sctx);
	SSL_CTX_free(f->cctx);
	event_base_free(f->base);
	free(f);
	return 0;
}

/* ---- tun_conn_new ---------------------------------------------------------- */

struct conn_run {
	struct fx *f;
	enum tun_role role;
};

static int conn_once(void *arg, unsigned long n)
{
	struct conn_run *a = arg;
	struct tun_conn_opts o;
	struct tun_conn *c;

	memset(&o, 0, sizeof(o));
	a->f->calls = 0;
	ts_alloc_arm(n);
	c = tun_conn_new(a->f->base, a->role, &o, &conn_cbs, a->f, "alloc");
	ts_alloc_disarm();
	assert_int_equal(a->f->calls, 0);
	if (!c)
		return SR_ENOMEM;
	tun_conn_start(c); /* the preface and the relay's control stream */
	tun_conn_free(c);
	ts_loop_run_for(a->f->base, 1);
	return 0;
}

static void test_tun_conn_new_relay(void **state)
{
	struct conn_run a = {*state, TUN_ROLE_RELAY};
	struct ts_alloc_result res;

	ts_alloc_sweep("tun_conn_new(relay)", conn_once, &a, &res);
	assert_int_equal(res.absorbed, 0);
}

static void test_tun_conn_new_sidecar(void **state)
{
	struct conn_run a = {*state, TUN_ROLE_SIDECAR};
	struct ts_alloc_result res;

	ts_alloc_sweep("tun_conn_new(sidecar)", conn_once, &a, &res);
	assert_int_equal(res.absorbed, 0);
}

/* ---- tun_tls contexts ---------------------------------------------------------- */

static int tls_ctx_once(void *arg, unsigned long n)
{
	char err[512] = "";
	SSL_CTX *s, *c;

	ts_alloc_arm(n);
	s = tun_tls_server_ctx(pki.relay_pem, pki.relay_key, pki.ca, 1, err, sizeof(err));
	c = s ? tun_tls_client_ctx(pki.ca, pki.sidecar_pem, pki.sidecar_key, err, sizeof(err))
	      : NULL;
	ts_alloc_disarm();
	SSL_CTX_free(s);
	SSL_CTX_free(c);
	if (!s || !c) {
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	return 0;
}

static void test_tls_contexts(void **state)
{
	ts_alloc_sweep("tun_tls_server_ctx+tun_tls_client_ctx", tls_ctx_once, NULL, NULL);
}

/* ---- tun_endpoint_new ------------------------------------------------------------ */

static void ep_on_up(struct tun_endpoint *ep, void *arg)
{
	((struct fx *)arg)->calls++;
}

static void ep_on_closed(struct tun_endpoint *ep, int err, const char *why, void *arg)
{
	((struct fx *)arg)->calls++;
}

static const struct tun_endpoint_cbs ep_cbs = {ep_on_up, ep_on_closed};

struct ep_run {
	struct fx *f;
	enum tun_role role;
	int tls;
};

static int ep_once(void *arg, unsigned long n)
{
	struct ep_run *a = arg;
	struct tun_conn_opts co;
	struct tun_endpoint_opts o;
	struct tun_endpoint *ep;
	int sv[2], failed;
	char c;

	memset(&co, 0, sizeof(co));
	memset(&o, 0, sizeof(o));
	o.role = a->role;
	o.conn = &co;
	o.conn_cbs = &conn_cbs;
	o.logctx = "alloc";
	o.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
	if (a->tls) {
		assert_non_null(
		    o.ssl = SSL_new(a->role == TUN_ROLE_RELAY ? a->f->sctx : a->f->cctx));
		if (a->role == TUN_ROLE_SIDECAR)
			assert_int_equal(SSL_set1_host(o.ssl, "localhost"), 1);
	}
	ts_socketpair_nb(sv);
	a->f->calls = 0;
	ts_alloc_arm(n);
	ep = tun_endpoint_new(a->f->base, sv[0], &o, &ep_cbs, a->f);
	failed = ts_alloc_disarm();
	assert_int_equal(a->f->calls, 0);
	tun_endpoint_free(ep);
	/* the socket was stolen in either case: closed now */
	assert_int_equal(recv(sv[1], &c, 1, 0), 0);
	close(sv[1]);
	ts_loop_run_for(a->f->base, 1);
	if (ep && failed)
		fail_msg("tun_endpoint_new went on with allocation %lu failed", n);
	return ep ? 0 : SR_ENOMEM;
}

static void sweep_endpoint(struct fx *f, enum tun_role role, int tls, const char *what)
{
	struct ep_run a = {f, role, tls};

	ts_alloc_sweep(what, ep_once, &a, NULL);
}

static void test_tun_endpoint_new(void **state)
{
	sweep_endpoint(*state, TUN_ROLE_RELAY, 0, "tun_endpoint_new(relay, plain)");
	sweep_endpoint(*state, TUN_ROLE_SIDECAR, 0, "tun_endpoint_new(sidecar, plain)");
	sweep_endpoint(*state, TUN_ROLE_RELAY, 1, "tun_endpoint_new(relay, TLS)");
	sweep_endpoint(*state, TUN_ROLE_SIDECAR, 1, "tun_endpoint_new(sidecar, TLS)");
}

/* ---- a whole bring-up ---------------------------------------------------------------- */

struct side {
	struct tun_endpoint *ep;
	int up, closed;
	int ctl_open; /* sidecar: the relay's control stream arrived */
};

struct pair {
	struct fx *f;
	int tls;
	struct side s[2]; /* [0] relay, [1] sidecar */
};

static void pair_on_up(struct tun_endpoint *ep, void *arg)
{
	struct pair *p = arg;

	p->s[p->s[0].ep == ep ? 0 : 1].up++;
}

/* As the relay and the sidecar do: the endpoint is freed when it ends. */
static void pair_on_closed(struct tun_endpoint *ep, int err, const char *why, void *arg)
{
	struct pair *p = arg;
	struct side *s = &p->s[p->s[0].ep == ep ? 0 : 1];

	s->closed++;
	tun_endpoint_free(ep);
	s->ep = NULL;
}

static void pair_on_ctl_open(struct tun_conn *c, void *arg)
{
	((struct pair *)arg)->s[1].ctl_open++;
}

static const struct tun_endpoint_cbs pair_ep_cbs = {pair_on_up, pair_on_closed};
static const struct tun_conn_cbs pair_conn_cbs = {
    .on_ctl_open = pair_on_ctl_open,
};

/* Each side is gone (never made, or closed and freed) or fully up: the
 * sidecar saw the control stream, which needs both sessions working. */
static int settled(void *arg)
{
	struct pair *p = arg;
	int relay_done = !p->s[0].ep || (p->s[0].up && (p->s[1].ctl_open || !p->s[1].ep));
	int sc_done = !p->s[1].ep || p->s[1].ctl_open;

	return relay_done && sc_done;
}

static int bringup_once(void *arg, unsigned long n)
{
	struct pair *p = arg;
	struct tun_conn_opts co;
	struct tun_endpoint_opts o[2];
	int sv[2], ok, made[2];

	memset(&co, 0, sizeof(co));
	memset(p->s, 0, sizeof(p->s));
	ts_socketpair_nb(sv);
	for (int i = 0; i < 2; i++) {
		memset(&o[i], 0, sizeof(o[i]));
		o[i].role = i == 0 ? TUN_ROLE_RELAY : TUN_ROLE_SIDECAR;
		o[i].conn = &co;
		o[i].conn_cbs = &pair_conn_cbs;
		o[i].logctx = i == 0 ? "relay" : "sidecar";
		o[i].handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
		if (p->tls) {
			assert_non_null(o[i].ssl = SSL_new(i == 0 ? p->f->sctx : p->f->cctx));
			if (i == 1)
				assert_int_equal(SSL_set1_host(o[i].ssl, "localhost"), 1);
		}
	}
	ts_alloc_arm(n);
	p->s[0].ep = tun_endpoint_new(p->f->base, sv[0], &o[0], &pair_ep_cbs, p);
	made[0] = p->s[0].ep != NULL;
	p->s[1].ep = tun_endpoint_new(p->f->base, sv[1], &o[1], &pair_ep_cbs, p);
	made[1] = p->s[1].ep != NULL;
	ok = ts_loop_until(p->f->base, settled, p, UP_WAIT_MS);
	ts_alloc_disarm();
	for (int i = 0; i < 2; i++) {
		assert_true(p->s[i].closed <= 1);
		assert_true(p->s[i].up <= 1);
		if (!made[i])
			assert_int_equal(p->s[i].up + p->s[i].closed, 0);
	}
	if (!ok)
		fail_msg("allocation %lu failed: the tunnel neither came up nor closed within "
			 "%d ms (relay up %d closed %d, sidecar up %d closed %d ctl %d)",
			 n, UP_WAIT_MS, p->s[0].up, p->s[0].closed, p->s[1].up, p->s[1].closed,
			 p->s[1].ctl_open);
	tun_endpoint_free(p->s[0].ep);
	tun_endpoint_free(p->s[1].ep);
	ts_loop_run_for(p->f->base, 1);
	return p->s[0].closed || p->s[1].closed || !made[0] || !made[1] ? SR_ENOMEM : 0;
}

static void test_bringup_plain(void **state)
{
	struct pair p = {.f = *state, .tls = 0};

	ts_alloc_sweep("tunnel bring-up (plain)", bringup_once, &p, NULL);
}

static void test_bringup_tls(void **state)
{
	struct pair p = {.f = *state, .tls = 1};

	ts_alloc_sweep("tunnel bring-up (TLS)", bringup_once, &p, NULL);
}

/* ---- sidecar_new ---------------------------------------------------------------------- */

struct sc_run {
	struct fx *f;
	struct sidecar_opts o;
	char state[TS_PKI_PATH];
};

static int sidecar_once(void *arg, unsigned long n)
{
	struct sc_run *a = arg;
	char err[512] = "";
	struct sidecar *s;

	ts_alloc_arm(n);
	s = sidecar_new(a->f->base, &a->o, NULL, NULL, err, sizeof(err));
	ts_alloc_disarm();
	sidecar_free(s);
	ts_loop_run_for(a->f->base, 1); /* cancelled resolution frees itself */
	if (!s) {
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	return 0;
}

static void test_sidecar_new(void **state)
{
	struct sc_run *a = calloc(1, sizeof(*a));
	static char relay_num[] = "127.0.0.1:1", relay_name[] = "localhost:1";

	assert_non_null(a);
	a->f = *state;
	a->o.relays[0] = relay_num;
	a->o.relays[1] = relay_name;
	a->o.nrelays = 2;
	a->o.ca_file = pki.ca;
	a->o.cert_file = pki.sidecar_pem;
	a->o.key_file = pki.sidecar_key;
	a->o.app_name = (char *)"alloc";
	ts_dir_file(&pki.dir, "state.json", a->state, sizeof(a->state));
	ts_write_file(a->state, "{\"resume\": \"resume-cafebabe\"}\n");
	a->o.state_path = a->state;
	ts_alloc_sweep("sidecar_new", sidecar_once, a, NULL);
	free(a);
}

static int group_setup(void **state)
{
	ts_pki_make(&pki, "tun-alloc");
	return 0;
}

static int group_teardown(void **state)
{
	ts_pki_remove(&pki);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	    T(test_tun_conn_new_relay), T(test_tun_conn_new_sidecar), T(test_tls_contexts),
	    T(test_tun_endpoint_new),	T(test_bringup_plain),	      T(test_bringup_tls),
	    T(test_sidecar_new),
#undef T
	};

	ts_alloc_init();
	/* every attempt fails something: SR_TEST_LOG=error shows what is said */
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
