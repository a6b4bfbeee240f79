/* sparkrelay-bench: command line. */
#include "bench/bench.h"

#include "common/sr_util.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char bench_usage_text[] =
	"usage: sparkrelay-bench server --listen HOST:PORT [--listen ...] [--max-seconds S]\n"
	"       sparkrelay-bench SCENARIO --connect HOST:PORT [options]\n"
	"\n"
	"scenarios (every load is bounded in time and count):\n"
	"  throughput  bulk transfer over --conns N (1), --dir down|up|both (down),\n"
	"              --bytes B per connection or --seconds S (5); CPU per GB of --pid\n"
	"  rpc         ping-pong of --size S bytes (64) over --conns M (1), up to\n"
	"              --count round trips or --seconds; latency percentiles; CPU per\n"
	"              round trip of --pid\n"
	"  connect     connect + one 64-byte exchange + close, --concurrency C (8) at once,\n"
	"              up to --count or --seconds (3); rate and latency percentiles;\n"
	"              CPU per connection of --pid\n"
	"  idle        hold --conns N (10000) idle connections (each proven by one\n"
	"              exchange) for --hold S (2); RSS per connection of each --pid\n"
	"  fairness    64-byte heartbeat every --hb-ms (10) on one connection while\n"
	"              --bulk K (1) connections move data (--dir); heartbeat percentiles\n"
	"  spark       --executors E (200) arriving --batch B (20) per second: bootstrap\n"
	"              connection, RPC connection with heartbeats every --hb-ms (10000)\n"
	"              x --time-scale (0.02), block-manager fetch of --bm-mib (16) from\n"
	"              --connect2 HOST:PORT; hold --hold S (1) after the last fetch;\n"
	"              with --result-mib M, executor 0 then sends --results K (1) task\n"
	"              results of M MiB on its RPC connection (as with a raised\n"
	"              spark.task.maxDirectResultSize) while the others heartbeat\n"
	"\n"
	"common options:\n"
	"  --pid PID       a tunnel process to measure (with its children); repeatable\n"
	"  --json FILE     also write the results as JSON\n"
	"  --label NAME    name of the tool under test, copied into the JSON\n"
	"  --timeout S     hard bound of the whole run (default: scenario bound + 60)\n"
	"sizes take K, M, G suffixes (powers of 1024)\n";

static int bench_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || v < 0)
		return -1;
	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= 1024 * 1024; end++; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
	default: break;
	}
	if (*end == 'i' || *end == 'B')
		end += *end == 'i' ? (end[1] == 'B' ? 2 : 1) : 1;
	if (*end != '\0')
		return -1;
	*out = (uint64_t)v;
	return 0;
}

static int bench_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[SR_ADDRSTRLEN];
	uint16_t port;
	if (sr_split_hostport(s, host, sizeof(host), &port, -1) != 0 || port == 0)
		return -1;
	return sr_parse_addr(host, port, ss, len) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	enum {
		O_CONNECT = 256, O_CONNECT2, O_CONNS, O_DIR, O_BYTES, O_SECONDS, O_TIMEOUT,
		O_SIZE, O_COUNT, O_CONC, O_BULK, O_HB, O_SCALE, O_EXEC, O_BATCH, O_BM, O_HOLD,
		O_PID, O_JSON, O_LABEL, O_HELP, O_RESULT, O_RESULTS,
	};
	static const struct option longopts[] = {
		{"connect", required_argument, NULL, O_CONNECT},
		{"connect2", required_argument, NULL, O_CONNECT2},
		{"conns", required_argument, NULL, O_CONNS},
		{"dir", required_argument, NULL, O_DIR},
		{"bytes", required_argument, NULL, O_BYTES},
		{"seconds", required_argument, NULL, O_SECONDS},
		{"timeout", required_argument, NULL, O_TIMEOUT},
		{"size", required_argument, NULL, O_SIZE},
		{"count", required_argument, NULL, O_COUNT},
		{"concurrency", required_argument, NULL, O_CONC},
		{"bulk", required_argument, NULL, O_BULK},
		{"hb-ms", required_argument, NULL, O_HB},
		{"time-scale", required_argument, NULL, O_SCALE},
		{"executors", required_argument, NULL, O_EXEC},
		{"batch", required_argument, NULL, O_BATCH},
		{"bm-mib", required_argument, NULL, O_BM},
		{"result-mib", required_argument, NULL, O_RESULT},
		{"results", required_argument, NULL, O_RESULTS},
		{"hold", required_argument, NULL, O_HOLD},
		{"pid", required_argument, NULL, O_PID},
		{"json", required_argument, NULL, O_JSON},
		{"label", required_argument, NULL, O_LABEL},
		{"help", no_argument, NULL, O_HELP},
		{NULL, 0, NULL, 0},
	};
	struct bench_opts o;
	const char *scen;
	int opt, have_addr = 0, conns = -1, hb = -1;
	uint64_t v;

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(bench_usage_text, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	scen = argv[1];
	if (strcmp(scen, "server") == 0)
		return bench_server_main(argc - 1, argv + 1);

	memset(&o, 0, sizeof(o));
	o.dir = BENCH_DOWN;
	o.size = 64;
	o.count = 10 * 1000 * 1000;
	o.concurrency = 8;
	o.bulk = 1;
	o.time_scale = 0.02;
	o.executors = 200;
	o.batch = 20;
	o.bm_mib = 16;
	o.results = 1;
	o.hold = -1;
	optind = 2;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case O_CONNECT:
			if (bench_parse_addr(optarg, &o.addr, &o.addrlen) != 0)
				goto bad;
			snprintf(o.target, sizeof(o.target), "%s", optarg);
			have_addr = 1;
			break;
		case O_CONNECT2:
			if (bench_parse_addr(optarg, &o.addr2, &o.addr2len) != 0)
				goto bad;
			o.have_addr2 = 1;
			break;
		case O_CONNS: conns = atoi(optarg); break;
		case O_DIR:
			if (strcmp(optarg, "down") == 0)
				o.dir = BENCH_DOWN;
			else if (strcmp(optarg, "up") == 0)
				o.dir = BENCH_UP;
			else if (strcmp(optarg, "both") == 0)
				o.dir = BENCH_BOTH;
			else
				goto bad;
			break;
		case O_BYTES:
			if (bench_parse_size(optarg, &o.bytes) != 0)
				goto bad;
			break;
		case O_SECONDS: o.seconds = strtod(optarg, NULL); break;
		case O_TIMEOUT: o.timeout = strtod(optarg, NULL); break;
		case O_SIZE:
			if (bench_parse_size(optarg, &v) != 0 || v == 0 || v > 16 * 1024 * 1024)
				goto bad;
			o.size = (size_t)v;
			break;
		case O_COUNT:
			if (bench_parse_size(optarg, &o.count) != 0 || o.count == 0)
				goto bad;
			break;
		case O_CONC: o.concurrency = atoi(optarg); break;
		case O_BULK: o.bulk = atoi(optarg); break;
		case O_HB: hb = atoi(optarg); break;
		case O_SCALE: o.time_scale = strtod(optarg, NULL); break;
		case O_EXEC: o.executors = atoi(optarg); break;
		case O_BATCH: o.batch = atoi(optarg); break;
		case O_BM: o.bm_mib = strtod(optarg, NULL); break;
		case O_RESULT: o.result_mib = strtod(optarg, NULL); break;
		case O_RESULTS: o.results = atoi(optarg); break;
		case O_HOLD: o.hold = strtod(optarg, NULL); break;
		case O_PID:
			if (o.npids == BENCH_MAX_PIDS)
				goto bad;
			o.pids[o.npids++] = strtol(optarg, NULL, 10);
			break;
		case O_JSON: o.json_path = optarg; break;
		case O_LABEL: o.label = optarg; break;
		case O_HELP: fputs(bench_usage_text, stdout); return 0;
		default: goto bad;
		}
	}
	if (!have_addr || optind != argc) {
		fprintf(stderr, "sparkrelay-bench %s: --connect HOST:PORT is required\n", scen);
		goto bad;
	}
	if (o.concurrency < 1 || o.bulk < 0 || o.executors < 1 || o.batch < 1 ||
	    o.time_scale <= 0 || o.bm_mib < 0 || o.seconds < 0 || o.result_mib < 0 ||
	    o.result_mib > 4095 || o.results < 1 || o.results > 1000) {
		fprintf(stderr, "sparkrelay-bench: an option is out of range\n");
		goto bad;
	}
	signal(SIGPIPE, SIG_IGN);
	sr_raise_nofile();
	if (strcmp(scen, "throughput") == 0) {
		o.conns = conns > 0 ? conns : 1;
		if (o.seconds == 0 && o.bytes == 0)
			o.seconds = 5;
		return bench_throughput(&o) == 0 ? 0 : 1;
	} else if (strcmp(scen, "rpc") == 0) {
		o.conns = conns > 0 ? conns : 1;
		if (o.seconds == 0)
			o.seconds = 5;
		return bench_rpc(&o) == 0 ? 0 : 1;
	} else if (strcmp(scen, "connect") == 0) {
		if (o.seconds == 0)
			o.seconds = 3;
		return bench_connect(&o) == 0 ? 0 : 1;
	} else if (strcmp(scen, "idle") == 0) {
		o.conns = conns > 0 ? conns : 10000;
		if (o.concurrency == 8)
			o.concurrency = 64;
		if (o.hold < 0)
			o.hold = 2;
		if (o.seconds == 0)
			o.seconds = 120;
		return bench_idle(&o) == 0 ? 0 : 1;
	} else if (strcmp(scen, "fairness") == 0) {
		o.hb_ms = hb > 0 ? hb : 10;
		if (o.seconds == 0)
			o.seconds = 5;
		return bench_fairness(&o) == 0 ? 0 : 1;
	} else if (strcmp(scen, "spark") == 0) {
		o.hb_ms = hb > 0 ? hb : 10000;
		if (o.hold < 0)
			o.hold = 1;
		if (o.seconds == 0)
			o.seconds = 120;
		if (!o.have_addr2) {
			fprintf(stderr, "sparkrelay-bench spark: --connect2 HOST:PORT (block manager) is required\n");
			goto bad;
		}
		return bench_spark(&o) == 0 ? 0 : 1;
	}
	fprintf(stderr, "sparkrelay-bench: unknown scenario %s\n", scen);
bad:
	fputs(bench_usage_text, stderr);
	return 2;
}
