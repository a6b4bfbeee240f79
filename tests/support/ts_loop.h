/* Test support: running a libevent loop for bounded slices of time. */
#ifndef TS_LOOP_H
#define TS_LOOP_H

struct event_base;

/* Run the loop for us microseconds (a short slice between checks). */
void ts_loop_step(struct event_base *base, int us);
/* Run the loop for ms milliseconds. */
void ts_loop_run_for(struct event_base *base, int ms);
/* Run the loop in slices of 20 ms until done(arg) is true or ms pass.
 * Returns done's last answer (0 on timeout); the caller asserts. */
int ts_loop_until(struct event_base *base, int (*done)(void *arg), void *arg, int ms);
/* The same for the common case *counter >= want. */
int ts_loop_until_count(struct event_base *base, const int *counter, int want, int ms);

#endif
