#include "tests/support/ts_pki.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>

#include "common/sr_devcert.h"

void ts_pki_make(struct ts_pki *p, const char *tag)
{
	char err[256] = "";

	memset(p, 0, sizeof(*p));
	ts_dir_make(&p->dir, tag);
	if (sr_devcert_write(p->dir.path, NULL, 1, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write: %s", err);
	ts_dir_file(&p->dir, "ca.pem", p->ca, sizeof(p->ca));
	ts_dir_file(&p->dir, "ca.key", p->ca_key, sizeof(p->ca_key));
	ts_dir_file(&p->dir, "relay.pem", p->relay_pem, sizeof(p->relay_pem));
	ts_dir_file(&p->dir, "relay.key", p->relay_key, sizeof(p->relay_key));
	ts_dir_file(&p->dir, "sidecar.pem", p->sidecar_pem, sizeof(p->sidecar_pem));
	ts_dir_file(&p->dir, "sidecar.key", p->sidecar_key, sizeof(p->sidecar_key));
}

void ts_pki_remove(struct ts_pki *p)
{
	ts_dir_remove(&p->dir);
}

X509 *ts_read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x;

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!x)
		fail_msg("%s: no PEM certificate", path);
	return x;
}

EVP_PKEY *ts_read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!k)
		fail_msg("%s: no PEM private key", path);
	return k;
}
