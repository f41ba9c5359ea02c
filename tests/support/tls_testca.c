/*
 * tls_testca.c - see tls_testca.h.
 */
#include "tls_testca.h"
#include "bm_err.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

static const char *const files[] = {
	"ca.pem", "ca.key", "server.pem", "server.key", "expired.pem",
	"expired.key", "other-ca.pem", "other-ca.key",
};

static int write_file(const char *dir, const char *name, const unsigned char *s)
{
	char path[4096];
	FILE *f;
	size_t n = strlen((const char *)s);
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		return BM_ESYS;
	ok = fwrite(s, 1, n, f) == n;
	ok &= fclose(f) == 0;
	return ok ? 0 : BM_EIO;
}

static int gen_key(mbedtls_pk_context *k, mbedtls_ctr_drbg_context *drbg)
{
	if (mbedtls_pk_setup(k, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)))
		return BM_ECRYPTO;
	if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*k),
				mbedtls_ctr_drbg_random, drbg))
		return BM_ECRYPTO;
	return 0;
}

/* Issue a certificate for subject_key signed by issuer_key. */
static int issue(mbedtls_ctr_drbg_context *drbg, mbedtls_pk_context *subject_key,
		 const char *subject, mbedtls_pk_context *issuer_key,
		 const char *issuer, int ca, int serial, const char *from,
		 const char *to, unsigned char *pem, size_t cap)
{
	/* SEQUENCE { [2] "localhost" } */
	static const unsigned char san[] = {
		0x30, 0x0b, 0x82, 0x09, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't'
	};
	mbedtls_x509write_cert w;
	mbedtls_mpi sn;
	int rc = BM_ECRYPTO;

	mbedtls_x509write_crt_init(&w);
	mbedtls_mpi_init(&sn);
	mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
	mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
	mbedtls_x509write_crt_set_subject_key(&w, subject_key);
	mbedtls_x509write_crt_set_issuer_key(&w, issuer_key);
	if (mbedtls_mpi_lset(&sn, serial) ||
	    mbedtls_x509write_crt_set_serial(&w, &sn) ||
	    mbedtls_x509write_crt_set_subject_name(&w, subject) ||
	    mbedtls_x509write_crt_set_issuer_name(&w, issuer) ||
	    mbedtls_x509write_crt_set_validity(&w, from, to) ||
	    mbedtls_x509write_crt_set_basic_constraints(&w, ca, ca ? 0 : -1) ||
	    mbedtls_x509write_crt_set_subject_key_identifier(&w) ||
	    mbedtls_x509write_crt_set_authority_key_identifier(&w))
		goto out;
	if (ca) {
		if (mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_KEY_CERT_SIGN |
							  MBEDTLS_X509_KU_CRL_SIGN))
			goto out;
	} else if (mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
			MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, san, sizeof(san))) {
		goto out;
	}
	if (mbedtls_x509write_crt_pem(&w, pem, cap, mbedtls_ctr_drbg_random, drbg))
		goto out;
	rc = 0;
out:
	mbedtls_mpi_free(&sn);
	mbedtls_x509write_crt_free(&w);
	return rc;
}

int bm_test_make_ca(const char *dir)
{
	static const char ca_name[] = "CN=BIMIP Test CA,O=BIMIP";
	static const char other_name[] = "CN=Other Test CA,O=Elsewhere";
	static const char srv_name[] = "CN=localhost,O=BIMIP";
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_pk_context ca, srv, exp, other;
	unsigned char pem[4096];
	int rc = BM_ECRYPTO;

	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	mbedtls_pk_init(&ca);
	mbedtls_pk_init(&srv);
	mbedtls_pk_init(&exp);
	mbedtls_pk_init(&other);
	if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent,
				  (const unsigned char *)"testca", 6))
		goto out;
	if ((rc = gen_key(&ca, &drbg)) || (rc = gen_key(&srv, &drbg)) ||
	    (rc = gen_key(&exp, &drbg)) || (rc = gen_key(&other, &drbg)))
		goto out;

#define KEY_OUT(k, name) do { \
	rc = BM_ECRYPTO; \
	if (mbedtls_pk_write_key_pem(&(k), pem, sizeof(pem))) goto out; \
	if ((rc = write_file(dir, name, pem))) goto out; \
} while (0)
#define CRT_OUT(args, name) do { \
	if ((rc = issue args)) goto out; \
	if ((rc = write_file(dir, name, pem))) goto out; \
} while (0)

	KEY_OUT(ca, "ca.key");
	KEY_OUT(srv, "server.key");
	KEY_OUT(exp, "expired.key");
	KEY_OUT(other, "other-ca.key");
	CRT_OUT((&drbg, &ca, ca_name, &ca, ca_name, 1, 1, "20200101000000",
		 "20491231235959", pem, sizeof(pem)), "ca.pem");
	CRT_OUT((&drbg, &srv, srv_name, &ca, ca_name, 0, 2, "20200101000000",
		 "20491231235959", pem, sizeof(pem)), "server.pem");
	CRT_OUT((&drbg, &exp, srv_name, &ca, ca_name, 0, 3, "20000101000000",
		 "20011231235959", pem, sizeof(pem)), "expired.pem");
	CRT_OUT((&drbg, &other, other_name, &other, other_name, 1, 4,
		 "20200101000000", "20491231235959", pem, sizeof(pem)), "other-ca.pem");
#undef KEY_OUT
#undef CRT_OUT
	rc = 0;
out:
	mbedtls_pk_free(&other);
	mbedtls_pk_free(&exp);
	mbedtls_pk_free(&srv);
	mbedtls_pk_free(&ca);
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
	return rc;
}

void bm_test_rm_ca(const char *dir)
{
	char path[4096];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}
