/* Link-time replacements for three libcurl back-ends that the static
 * `sparkrelay` (./dev dist, packaging/static.cmake) cannot take from Debian:
 *
 *   GSS-API (Kerberos, SPNEGO/Negotiate auth): Debian's krb5 ships no static
 *     library (libkrb5-dev has only .so files);
 *   LDAP and RTMP: Debian builds libldap and librtmp with GnuTLS, whose
 *     libp11-kit dependency ships no static library.
 *
 * Debian's libcurl.a references all three from its protocol and auth tables,
 * so they must resolve. Nothing in sparkrelay reaches them: the only libcurl
 * user, `sparkrelay ctl`, restricts its handle to http and https
 * (CURLOPT_PROTOCOLS_STR) and never enables Negotiate (CURLOPT_HTTPAUTH and
 * CURLOPT_PROXYAUTH keep their Basic-only defaults). Should a later caller
 * reach one anyway, every function here fails cleanly: GSS_S_FAILURE,
 * LDAP_NOT_SUPPORTED, RTMP false/NULL; libcurl turns each into an ordinary
 * error (the back-end's connect fails), never a crash.
 *
 * The prototypes are written out instead of taken from <gssapi.h>, <ldap.h>
 * and <librtmp/rtmp.h> (not installed on the build machine): every argument
 * is a pointer or an int of the real ABI, and only the return types matter
 * to a caller. Compiled into the static build only. */
#include <stddef.h>
#include <stdint.h>

/* ---- GSS-API (RFC 2744) -------------------------------------------------- */

typedef uint32_t OM_uint32;

#define GSS_S_COMPLETE 0u
#define GSS_S_FAILURE (13u << 16)

struct gss_buffer_desc_struct {
	size_t length;
	void *value;
};

struct gss_OID_desc_struct {
	OM_uint32 length;
	void *elements;
};

/* 1.2.840.113554.1.2.1.4, as in MIT krb5, so that the variable is a valid
 * OID should anything compare it. */
static struct gss_OID_desc_struct nt_hostbased = {
    10, (void *)"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x04"};
struct gss_OID_desc_struct *GSS_C_NT_HOSTBASED_SERVICE = &nt_hostbased;

static OM_uint32 gss_fail(OM_uint32 *minor)
{
	if (minor)
		*minor = 0;
	return GSS_S_FAILURE;
}

OM_uint32 gss_init_sec_context(OM_uint32 *minor, void *cred, void **ctx, void *name, void *mech,
			       OM_uint32 flags, OM_uint32 time_req, void *bindings, void *input,
			       void **actual_mech, struct gss_buffer_desc_struct *output,
			       OM_uint32 *ret_flags, OM_uint32 *time_rec)
{
	if (output) {
		output->length = 0;
		output->value = NULL;
	}
	return gss_fail(minor);
}

OM_uint32 gss_delete_sec_context(OM_uint32 *minor, void **ctx, void *output)
{
	if (ctx)
		*ctx = NULL;
	if (minor)
		*minor = 0;
	return GSS_S_COMPLETE;
}

OM_uint32 gss_display_name(OM_uint32 *minor, void *name, void *buf, void **type)
{
	return gss_fail(minor);
}

OM_uint32 gss_display_status(OM_uint32 *minor, OM_uint32 status, int type, void *mech,
			     OM_uint32 *msg_ctx, struct gss_buffer_desc_struct *buf)
{
	if (msg_ctx)
		*msg_ctx = 0; /* ends the caller's message loop */
	if (buf) {
		buf->length = 0;
		buf->value = NULL;
	}
	return gss_fail(minor);
}

OM_uint32 gss_import_name(OM_uint32 *minor, void *buf, void *type, void **name)
{
	if (name)
		*name = NULL;
	return gss_fail(minor);
}

OM_uint32 gss_inquire_context(OM_uint32 *minor, void *ctx, void **src, void **targ,
			      OM_uint32 *lifetime, void **mech, OM_uint32 *flags, int *local,
			      int *open)
{
	return gss_fail(minor);
}

OM_uint32 gss_release_buffer(OM_uint32 *minor, struct gss_buffer_desc_struct *buf)
{
	if (buf) {
		buf->length = 0;
		buf->value = NULL;
	}
	if (minor)
		*minor = 0;
	return GSS_S_COMPLETE;
}

OM_uint32 gss_release_name(OM_uint32 *minor, void **name)
{
	if (name)
		*name = NULL;
	if (minor)
		*minor = 0;
	return GSS_S_COMPLETE;
}

OM_uint32 gss_unwrap(OM_uint32 *minor, void *ctx, void *in, void *out, int *conf, void *qop)
{
	return gss_fail(minor);
}

OM_uint32 gss_wrap(OM_uint32 *minor, void *ctx, int conf_req, OM_uint32 qop, void *in,
		   int *conf, void *out)
{
	return gss_fail(minor);
}

/* ---- OpenLDAP 2.5 -------------------------------------------------------- */

#define LDAP_NOT_SUPPORTED (-12)

static int ldap_fail(void)
{
	return LDAP_NOT_SUPPORTED;
}

int ldap_init_fd(int fd, int proto, const char *url, void **ld)
{
	if (ld)
		*ld = NULL;
	return ldap_fail();
}

int ldap_url_parse(const char *url, void **desc)
{
	if (desc)
		*desc = NULL;
	return ldap_fail();
}

void ldap_free_urldesc(void *desc)
{
}

int ldap_pvt_url_scheme2proto(const char *scheme)
{
	return -1;
}

char *ldap_err2string(int err)
{
	return (char *)"LDAP is not built into this sparkrelay";
}

int ldap_get_option(void *ld, int option, void *out)
{
	return ldap_fail();
}

int ldap_set_option(void *ld, int option, const void *in)
{
	return ldap_fail();
}

int ldap_start_tls(void *ld, void *sctrls, void *cctrls, int *msgid)
{
	return ldap_fail();
}

int ldap_sasl_bind(void *ld, const char *dn, const char *mech, void *cred, void *sctrls,
		   void *cctrls, int *msgid)
{
	return ldap_fail();
}

int ldap_search_ext(void *ld, const char *base, int scope, const char *filter, char **attrs,
		    int attrsonly, void *sctrls, void *cctrls, void *timeout, int sizelimit,
		    int *msgid)
{
	return ldap_fail();
}

int ldap_result(void *ld, int msgid, int all, void *timeout, void **result)
{
	if (result)
		*result = NULL;
	return -1;
}

int ldap_msgtype(void *msg)
{
	return -1;
}

int ldap_msgfree(void *msg)
{
	return -1;
}

int ldap_parse_result(void *ld, void *res, int *err, char **matched, char **msg, char ***refs,
		      void *sctrls, int freeit)
{
	return ldap_fail();
}

int ldap_parse_sasl_bind_result(void *ld, void *res, void **creds, int freeit)
{
	return ldap_fail();
}

int ldap_get_dn_ber(void *ld, void *entry, void **ber, void *dn)
{
	return ldap_fail();
}

int ldap_get_attribute_ber(void *ld, void *entry, void *ber, void *attr, void **vals)
{
	return ldap_fail();
}

int ldap_abandon_ext(void *ld, int msgid, void *sctrls, void *cctrls)
{
	return ldap_fail();
}

int ldap_unbind_ext(void *ld, void *sctrls, void *cctrls)
{
	return 0;
}

void ldap_memfree(void *p)
{
}

void ber_memfree(void *p)
{
}

void ber_bvfree(void *bv)
{
}

void ber_free(void *ber, int freebuf)
{
}

int ber_sockbuf_add_io(void *sb, void *io, int layer, void *arg)
{
	return -1;
}

/* ---- librtmp ------------------------------------------------------------- */

void *RTMP_Alloc(void)
{
	return NULL;
}

void RTMP_Init(void *r)
{
}

void RTMP_Free(void *r)
{
}

void RTMP_Close(void *r)
{
}

int RTMP_SetupURL(void *r, char *url)
{
	return 0;
}

void RTMP_SetBufferMS(void *r, int ms)
{
}

int RTMP_Connect1(void *r, void *packet)
{
	return 0;
}

int RTMP_ConnectStream(void *r, int seek)
{
	return 0;
}

int RTMP_Read(void *r, char *buf, int size)
{
	return -1;
}

int RTMP_Write(void *r, const char *buf, int size)
{
	return -1;
}
