/* Subcommands implemented outside main.c. */
#ifndef CMD_H
#define CMD_H

/* `sparkrelay demo`: argv[0] is "demo". Returns the exit status. */
int cmd_demo(int argc, char **argv);

/* `sparkrelay ctl`: argv[0] is "ctl". Exit status 0 ok, 1 API or
 * connection error, 2 usage error. */
int cmd_ctl(int argc, char **argv);

#endif
