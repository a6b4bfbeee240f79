/* Test support: assertions cmocka lacks, named like cmocka's own. */
#ifndef TS_ASSERT_H
#define TS_ASSERT_H

struct tun_ctl_msg;

/* Fails the test, quoting both, unless needle occurs in hay. */
void assert_contains(const char *hay, const char *needle);
/* Fails the test unless every field of two control messages is equal, but
 * v, which the parser sets and an encoder may leave 0. */
void assert_ctl_msg_equal(const struct tun_ctl_msg *a, const struct tun_ctl_msg *b);

#endif
