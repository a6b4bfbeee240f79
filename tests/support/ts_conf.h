/* Test support: checks on a loaded configuration (conf/conf.h). */
#ifndef TS_CONF_H
#define TS_CONF_H

struct sr_config;

/* conf_dump of cfg as a malloc'd string: two configurations are the same
 * when their dumps are. */
char *ts_conf_dump(const struct sr_config *cfg);
/* Fails the test unless cfg is all zero, as a failed load leaves it. */
void assert_empty_cfg(const struct sr_config *cfg);

#endif
