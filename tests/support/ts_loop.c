#include "tests/support/ts_loop.h"

#include <stdint.h>
#include <sys/time.h>

#include <event2/event.h>

#include "common/sr_util.h"

#define SLICE_US 20000

void ts_loop_step(struct event_base *base, int us)
{
	struct timeval tv = {us / 1000000, us % 1000000};

	/* loopexit allocates: under a failed-allocation test it may fail, and
	 * the loop must not then block for ever */
	if (event_base_loopexit(base, &tv) != 0) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		return;
	}
	event_base_dispatch(base);
}

void ts_loop_run_for(struct event_base *base, int ms)
{
	ts_loop_step(base, ms * 1000);
}

int ts_loop_until(struct event_base *base, int (*done)(void *arg), void *arg, int ms)
{
	uint64_t deadline = sr_now_us() + (uint64_t)ms * 1000u;
	int ok;

	while (!(ok = done(arg)) && sr_now_us() < deadline)
		ts_loop_step(base, SLICE_US);
	return ok;
}

static int count_reached(void *arg)
{
	const int *const *p = arg;

	return *p[0] >= *p[1];
}

int ts_loop_until_count(struct event_base *base, const int *counter, int want, int ms)
{
	const int *p[2] = {counter, &want};

	return ts_loop_until(base, count_reached, (void *)p, ms);
}
