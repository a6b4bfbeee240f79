/* Test support: development certificates (common/sr_devcert.h) in a
 * temporary folder, and reading PEM files back for checks. */
#ifndef TS_PKI_H
#define TS_PKI_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "tests/support/ts_sys.h"

#define TS_PKI_PATH 192

struct ts_pki {
	struct ts_dir dir;
	char ca[TS_PKI_PATH], ca_key[TS_PKI_PATH];
	char relay_pem[TS_PKI_PATH], relay_key[TS_PKI_PATH];
	char sidecar_pem[TS_PKI_PATH], sidecar_key[TS_PKI_PATH];
};

/* A fresh CA, relay and sidecar certificate in /tmp/sr-<tag>-XXXXXX, valid
 * for a day; the relay's names are sr_devcert's (localhost, 127.0.0.1..3,
 * ::1). */
void ts_pki_make(struct ts_pki *p, const char *tag);
/* Remove the folder and everything in it (files a test added too). */
void ts_pki_remove(struct ts_pki *p);

/* The first certificate / the private key of a PEM file. */
X509 *ts_read_cert(const char *path);
EVP_PKEY *ts_read_key(const char *path);

#endif
