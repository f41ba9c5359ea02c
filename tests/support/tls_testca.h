/*
 * tls_testca.h - throw-away PKI for tests, generated with mbedTLS x509write
 * (EC P-256, a few milliseconds).
 *
 * bm_test_make_ca(dir) writes into dir (which must exist, e.g. from mkdtemp):
 *   ca.pem, ca.key             self-signed test CA
 *   server.pem, server.key     leaf for CN=localhost (SAN DNS:localhost),
 *                              signed by the CA, valid 2020..2049
 *   expired.pem, expired.key   same name, signed by the CA, expired in 2001
 *   other-ca.pem               an unrelated CA (a client trusting only it
 *                              must refuse server.pem)
 * Returns 0 or a negative BM_E* code.  bm_test_rm_ca(dir) removes those
 * files and dir itself.
 */
#ifndef BM_TLS_TESTCA_H
#define BM_TLS_TESTCA_H

int bm_test_make_ca(const char *dir);
void bm_test_rm_ca(const char *dir);

#endif
