/* Histogram, report, /proc readers and socket helpers of sparkrelay-bench. */
#include "bench/bench.h"

#include "common/sr_err.h"
#include "common/sr_util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void bench_hist_add(struct bench_hist *h, uint64_t us)
{
	if (h->n == h->cap) {
		size_t ncap = h->cap ? h->cap * 2 : 1024;
		uint32_t *nv;
		if (ncap > BENCH_HIST_CAP)
			ncap = BENCH_HIST_CAP;
		if (ncap <= h->n) {
			h->n_dropped++;
			return;
		}
		nv = realloc(h->v, ncap * sizeof(*nv));
		if (nv == NULL) {
			h->n_dropped++;
			return;
		}
		h->v = nv;
		h->cap = ncap;
	}
	h->v[h->n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	h->sorted = 0;
}

static int bench_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

double bench_hist_pct(struct bench_hist *h, double p)
{
	size_t i;
	if (h->n == 0)
		return 0;
	if (!h->sorted) {
		qsort(h->v, h->n, sizeof(*h->v), bench_cmp_u32);
		h->sorted = 1;
	}
	/* Nearest-rank: the smallest sample with at least p% at or below it. */
	i = (size_t)((p / 100.0) * (double)h->n + 0.999999);
	if (i == 0)
		i = 1;
	if (i > h->n)
		i = h->n;
	return h->v[i - 1];
}

void bench_hist_fini(struct bench_hist *h)
{
	free(h->v);
	memset(h, 0, sizeof(*h));
}

struct bench_report {
	json_t *root;
	json_t *params;
	json_t *results;
	const char *json_path;
	char title[256];
	char rows[64][160];
	int nrows;
};

struct bench_report *bench_report_new(const char *scenario, const struct bench_opts *o)
{
	struct bench_report *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return NULL;
	r->root = json_object();
	r->params = json_object();
	r->results = json_object();
	if (r->root == NULL || r->params == NULL || r->results == NULL) {
		json_decref(r->root);
		json_decref(r->params);
		json_decref(r->results);
		free(r);
		return NULL;
	}
	json_object_set_new(r->root, "scenario", json_string(scenario));
	json_object_set_new(r->root, "target", json_string(o->target));
	if (o->label)
		json_object_set_new(r->root, "label", json_string(o->label));
	json_object_set_new(r->root, "time", json_integer((json_int_t)time(NULL)));
	json_object_set(r->root, "params", r->params);
	json_object_set(r->root, "results", r->results);
	r->json_path = o->json_path;
	snprintf(r->title, sizeof(r->title), "== %s -> %s%s%s ==", scenario, o->target,
		 o->label ? " " : "", o->label ? o->label : "");
	return r;
}

void bench_report_param(struct bench_report *r, const char *key, double v)
{
	json_object_set_new(r->params, key, json_real(v));
}

void bench_report_param_str(struct bench_report *r, const char *key, const char *v)
{
	json_object_set_new(r->params, key, json_string(v));
	if (r->nrows < (int)SR_ARRAY_LEN(r->rows))
		snprintf(r->rows[r->nrows++], sizeof(r->rows[0]), "%-34s %s", key, v);
}

static void bench_report_row(struct bench_report *r, const char *label, const char *val)
{
	if (r->nrows >= (int)SR_ARRAY_LEN(r->rows))
		return;
	snprintf(r->rows[r->nrows++], sizeof(r->rows[0]), "%-34s %s", label, val);
}

void bench_report_num(struct bench_report *r, const char *key, const char *label,
		      double v, const char *unit, int decimals)
{
	char buf[96];
	json_object_set_new(r->results, key, json_real(v));
	snprintf(buf, sizeof(buf), "%.*f %s", decimals, v, unit);
	bench_report_row(r, label, buf);
}

void bench_report_hist(struct bench_report *r, const char *key, const char *label,
		       struct bench_hist *h)
{
	static const struct {
		const char *k;
		double p;
	} pcts[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}, {"max", 100}};
	json_t *o = json_object();
	char buf[160];
	double sum = 0;
	size_t i;
	for (i = 0; i < h->n; i++)
		sum += h->v[i];
	json_object_set_new(o, "count", json_integer((json_int_t)h->n));
	json_object_set_new(o, "mean", json_real(h->n ? sum / (double)h->n : 0));
	for (i = 0; i < SR_ARRAY_LEN(pcts); i++)
		json_object_set_new(o, pcts[i].k, json_real(bench_hist_pct(h, pcts[i].p)));
	json_object_set_new(r->results, key, o);
	snprintf(buf, sizeof(buf), "p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f  max %.0f us (n=%zu)",
		 bench_hist_pct(h, 50), bench_hist_pct(h, 90), bench_hist_pct(h, 99),
		 bench_hist_pct(h, 99.9), bench_hist_pct(h, 100), h->n);
	bench_report_row(r, label, buf);
}

int bench_report_finish(struct bench_report *r)
{
	int i, rc = 0;
	printf("%s\n", r->title);
	for (i = 0; i < r->nrows; i++)
		printf("  %s\n", r->rows[i]);
	fflush(stdout);
	if (r->json_path != NULL &&
	    json_dump_file(r->root, r->json_path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
		fprintf(stderr, "sparkrelay-bench: cannot write %s\n", r->json_path);
		rc = SR_EIO;
	}
	json_decref(r->params);
	json_decref(r->results);
	json_decref(r->root);
	free(r);
	return rc;
}

/* Fields of /proc/PID/stat after the command name, which may hold spaces
 * and parentheses: parse from the last ')'. */
static int bench_stat_read(long pid, long *ppid, double *cpu)
{
	char path[64], buf[1024];
	unsigned long long ut, st;
	long long cut, cst;
	long pp;
	FILE *f;
	size_t n;
	char *p;
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if (p == NULL)
		return -1;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime */
	if (sscanf(p + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &pp,
		   &ut, &st, &cut, &cst) != 5)
		return -1;
	*ppid = pp;
	*cpu = (double)(ut + st + (unsigned long long)cut + (unsigned long long)cst) /
	       (double)sysconf(_SC_CLK_TCK);
	return 0;
}

/* All live processes as (pid, ppid, cpu); the caller frees *out. */
struct bench_proc {
	long pid, ppid;
	double cpu;
};

static size_t bench_proc_list(struct bench_proc **out)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	struct bench_proc *v = NULL;
	size_t n = 0, cap = 0;
	*out = NULL;
	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		struct bench_proc p;
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		p.pid = strtol(de->d_name, NULL, 10);
		if (bench_stat_read(p.pid, &p.ppid, &p.cpu) != 0)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 256;
			struct bench_proc *nv = realloc(v, ncap * sizeof(*nv));
			if (nv == NULL)
				break;
			v = nv;
			cap = ncap;
		}
		v[n++] = p;
	}
	closedir(d);
	*out = v;
	return n;
}

/* Is pid the root or a descendant of root? Bounded walk up the ppid chain. */
static int bench_proc_under(const struct bench_proc *v, size_t n, long pid, long root)
{
	int depth;
	for (depth = 0; depth < 64 && pid > 1; depth++) {
		size_t i;
		if (pid == root)
			return 1;
		for (i = 0; i < n && v[i].pid != pid; i++)
			;
		if (i == n)
			return 0;
		pid = v[i].ppid;
	}
	return 0;
}

double bench_proc_cpu(const long *pids, int npids)
{
	struct bench_proc *v;
	size_t n, i;
	double sum = 0;
	int k;
	if (npids == 0)
		return 0;
	n = bench_proc_list(&v);
	for (i = 0; i < n; i++)
		for (k = 0; k < npids; k++)
			if (bench_proc_under(v, n, v[i].pid, pids[k])) {
				sum += v[i].cpu;
				break;
			}
	free(v);
	return sum;
}

static long bench_rss_one(long pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;
	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	fclose(f);
	return kib;
}

long bench_proc_rss(long pid)
{
	struct bench_proc *v;
	size_t n, i;
	long sum = bench_rss_one(pid);
	if (sum < 0)
		return -1;
	n = bench_proc_list(&v);
	for (i = 0; i < n; i++)
		if (v[i].pid != pid && bench_proc_under(v, n, v[i].pid, pid)) {
			long k = bench_rss_one(v[i].pid);
			if (k > 0)
				sum += k;
		}
	free(v);
	return sum;
}

void bench_bev_tune(struct bufferevent *bev)
{
	/* libevent reads and writes 16 KiB per call by default: the load
	 * generator must not be the bottleneck of a 30 Gbit/s path. */
	bufferevent_set_max_single_read(bev, 256 * 1024);
	bufferevent_set_max_single_write(bev, 256 * 1024);
}

struct bufferevent *bench_dial(struct event_base *base, const struct sockaddr_storage *ss,
			       socklen_t len)
{
	struct bufferevent *bev;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	sr_sock_nodelay(fd);
	bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return NULL;
	}
	bench_bev_tune(bev);
	if (bufferevent_socket_connect(bev, (const struct sockaddr *)ss, (int)len) != 0) {
		bufferevent_free(bev);
		return NULL;
	}
	return bev;
}

const unsigned char *bench_payload(void)
{
	static unsigned char buf[BENCH_CHUNK];
	static int init;
	if (!init) {
		size_t i;
		for (i = 0; i < sizeof(buf); i++)
			buf[i] = (unsigned char)('a' + i % 26);
		init = 1;
	}
	return buf;
}

size_t bench_fill(struct evbuffer *out, size_t high, uint64_t *left)
{
	size_t queued = 0;
	const unsigned char *p = bench_payload();
	while (evbuffer_get_length(out) < high && (left == NULL || *left > 0)) {
		size_t n = BENCH_CHUNK;
		if (left != NULL && *left < n)
			n = (size_t)*left;
		if (evbuffer_add_reference(out, p, n, NULL, NULL) != 0)
			break;
		queued += n;
		if (left != NULL)
			*left -= n;
	}
	return queued;
}

double bench_now_s(void)
{
	return (double)sr_now_us() / 1e6;
}

static void bench_run_soft_cb(evutil_socket_t fd, short what, void *arg)
{
	bench_run_stop(arg);
}

static void bench_run_hard_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bench_run *run = arg;
	run->timed_out = 1;
	if (!run->stopping) {
		run->stopping = 1;
		run->t_stop = bench_now_s();
	}
	event_base_loopbreak(run->base);
}

struct timeval bench_tv(double s)
{
	struct timeval tv;
	tv.tv_sec = (time_t)s;
	tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
	return tv;
}

int bench_run_init(struct bench_run *run, double soft, double hard,
		   void (*on_stop)(struct bench_run *run), void *arg)
{
	struct timeval tv;
	memset(run, 0, sizeof(*run));
	run->on_stop = on_stop;
	run->arg = arg;
	run->base = event_base_new();
	if (run->base == NULL)
		return SR_ENOMEM;
	run->soft_ev = evtimer_new(run->base, bench_run_soft_cb, run);
	run->hard_ev = evtimer_new(run->base, bench_run_hard_cb, run);
	if (run->soft_ev == NULL || run->hard_ev == NULL) {
		bench_run_fini(run);
		return SR_ENOMEM;
	}
	if (soft > 0) {
		tv = bench_tv(soft);
		evtimer_add(run->soft_ev, &tv);
	}
	tv = bench_tv(hard);
	evtimer_add(run->hard_ev, &tv);
	run->t0 = bench_now_s();
	return 0;
}

void bench_run_stop(struct bench_run *run)
{
	if (run->stopping)
		return;
	run->stopping = 1;
	run->t_stop = bench_now_s();
	if (run->on_stop)
		run->on_stop(run);
}

void bench_run_fini(struct bench_run *run)
{
	if (run->soft_ev)
		event_free(run->soft_ev);
	if (run->hard_ev)
		event_free(run->hard_ev);
	if (run->base)
		event_base_free(run->base);
	memset(run, 0, sizeof(*run));
}
