#include "tests/support/ts_conf.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>

#include "conf/conf.h"

char *ts_conf_dump(const struct sr_config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	assert_int_equal(conf_dump(cfg, f), 0);
	assert_int_equal(fclose(f), 0);
	return buf;
}

void assert_empty_cfg(const struct sr_config *cfg)
{
	static const struct sr_config zero;

	assert_memory_equal(cfg, &zero, sizeof(zero));
}
