/* sparkrelay-bench: a load generator with Spark-shaped scenarios.
 *
 * One binary, two sides. `server` listens on loopback and serves every
 * scenario; each client connection picks a behaviour with a one-line header:
 *
 *   "ECHO\n"      echo every byte back; on EOF flush, then close
 *   "SINK\n"      discard; on EOF answer "OK <bytes received>\n" and close
 *   "SRC <n>\n"   send n bytes (0: without end) and discard input; after the
 *                 n bytes half-close and close on the client's EOF
 *   "RPC\n"       messages u32 length | u32 reply size | payload (big-endian),
 *                 each answered with reply-size bytes once it has arrived
 *                 whole: Spark's RPC connection, where a heartbeat is answered
 *                 and a task result (up to spark.task.maxDirectResultSize)
 *                 travels as one message
 *
 * so one server process serves direct TCP and every tunnel under test. Every
 * client scenario is bounded in count and in time and stops by itself. */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#define BENCH_MAX_PIDS 16
#define BENCH_CHUNK (64 * 1024)     /* one reference to the static payload */
#define BENCH_OUT_HIGH (1024 * 1024) /* keep at most this much queued per socket */
#define BENCH_HIST_CAP (20u * 1000 * 1000) /* samples kept per histogram */

enum bench_dir { BENCH_DOWN = 1, BENCH_UP = 2, BENCH_BOTH = 3 };

/* Every option of every scenario; each scenario reads the ones it documents. */
struct bench_opts {
	struct sockaddr_storage addr; /* --connect: the front (driver port) */
	socklen_t addrlen;
	struct sockaddr_storage addr2; /* --connect2: block-manager port (spark) */
	socklen_t addr2len;
	int have_addr2;
	char target[128]; /* --connect as given, for the report */
	int conns;        /* throughput, rpc: connections; idle: held connections */
	enum bench_dir dir;
	uint64_t bytes;     /* per connection; 0: run for seconds */
	double seconds;     /* bound of the load phase */
	double timeout;     /* hard bound of the whole run */
	size_t size;        /* rpc message size */
	uint64_t count;     /* bound on operations (round trips, connects) */
	int concurrency;    /* connect/idle: connections in progress at once */
	int bulk;           /* fairness: bulk connections */
	int hb_ms;          /* fairness/spark: heartbeat interval (spark: before scaling) */
	double time_scale;  /* spark: heartbeat interval multiplier */
	int executors;      /* spark */
	int batch;          /* spark: executors arriving per second */
	double bm_mib;      /* spark: broadcast size fetched by each executor */
	double result_mib;  /* spark: task result sent on one executor's RPC connection */
	int results;        /* spark: how many, one after the other */
	double hold;        /* idle/spark: seconds to hold after all are up */
	long pids[BENCH_MAX_PIDS];
	int npids;
	const char *json_path;
	const char *label; /* --label, copied into the JSON (tool name) */
};

/* Latency samples in microseconds, exact percentiles by sorting. Bounded:
 * samples past BENCH_HIST_CAP are counted in n_dropped only. */
struct bench_hist {
	uint32_t *v;
	size_t n, cap;
	uint64_t n_dropped;
	int sorted;
};

void bench_hist_add(struct bench_hist *h, uint64_t us);
/* p in [0, 100]; 0 when empty. */
double bench_hist_pct(struct bench_hist *h, double p);
void bench_hist_fini(struct bench_hist *h);

/* A scenario's results: printed as a table on stdout and kept as JSON. */
struct bench_report;
struct bench_report *bench_report_new(const char *scenario, const struct bench_opts *o);
void bench_report_param(struct bench_report *r, const char *key, double v);
void bench_report_param_str(struct bench_report *r, const char *key, const char *v);
void bench_report_num(struct bench_report *r, const char *key, const char *label,
		      double v, const char *unit, int decimals);
/* Adds key.{count,p50,p90,p99,p999,max,mean} in microseconds. */
void bench_report_hist(struct bench_report *r, const char *key, const char *label,
		       struct bench_hist *h);
/* Prints the table, writes the JSON file when o->json_path is set, frees r.
 * Returns 0 or SR_EIO. */
int bench_report_finish(struct bench_report *r);

/* CPU seconds (utime+stime+cutime+cstime) of the pids and all their live
 * descendants; returns 0 when npids is 0. */
double bench_proc_cpu(const long *pids, int npids);
/* VmRSS in KiB of one pid plus its live descendants; -1 if it is gone. */
long bench_proc_rss(long pid);

/* Non-blocking connect with TCP_NODELAY; the bufferevent owns the socket.
 * Returns NULL when the socket cannot be made (EMFILE...). */
struct event_base;
struct bufferevent;
struct bufferevent *bench_dial(struct event_base *base, const struct sockaddr_storage *ss,
			       socklen_t len);

/* Larger single reads and writes than libevent's 16 KiB default. */
void bench_bev_tune(struct bufferevent *bev);

/* A static buffer of BENCH_CHUNK pattern bytes for payloads. */
const unsigned char *bench_payload(void);
/* Queue payload bytes by reference until evbuffer holds `high` or `*left`
 * reaches 0 (left NULL: unbounded). Returns bytes queued. */
struct evbuffer;
size_t bench_fill(struct evbuffer *out, size_t high, uint64_t *left);

double bench_now_s(void);
struct timeval bench_tv(double seconds);

/* The clock and bounds of one client run: `soft` seconds after start the
 * on_stop callback asks the load to wind down; `hard` seconds after start the
 * loop is broken whatever is left (timed_out is set). */
struct bench_run {
	struct event_base *base;
	struct event *soft_ev, *hard_ev;
	double t0, t_stop;
	int stopping, timed_out;
	void (*on_stop)(struct bench_run *run);
	void *arg;
};
int bench_run_init(struct bench_run *run, double soft, double hard,
		   void (*on_stop)(struct bench_run *run), void *arg);
/* Stops the load now (idempotent): sets stopping and t_stop, calls on_stop. */
void bench_run_stop(struct bench_run *run);
void bench_run_fini(struct bench_run *run);

int bench_server_main(int argc, char **argv);
int bench_throughput(struct bench_opts *o);
int bench_rpc(struct bench_opts *o);
int bench_connect(struct bench_opts *o);
int bench_idle(struct bench_opts *o);
int bench_fairness(struct bench_opts *o);
int bench_spark(struct bench_opts *o);

#endif
