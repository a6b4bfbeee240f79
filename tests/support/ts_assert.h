/* Test support: assertions cmocka lacks. */
#ifndef TS_ASSERT_H
#define TS_ASSERT_H

/* Fails the test, quoting both, unless needle occurs in hay. */
void ts_assert_contains(const char *hay, const char *needle);

#endif
