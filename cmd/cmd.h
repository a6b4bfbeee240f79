/* Subcommands implemented outside main.c. */
#ifndef CMD_H
#define CMD_H

/* `sparkrelay demo`: argv[0] is "demo". Returns the exit status. */
int cmd_demo(int argc, char **argv);

#endif
