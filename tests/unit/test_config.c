#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "bm_buf.h"
#include "bm_config.h"
#include "bm_err.h"
#include "bm_log.h"

struct tconf {
	char ws[64];
	char name[8];
	int64_t max_frame;
	int64_t idle_ms;
	int64_t rate;
	int workers;
	int debug;
	bool tls;
	double ratio;
	int level;
	char peers[3][16];
	char key[32];
	void *not_in_table;
};

static const char *const levels[] = { "error", "warn", "info", "debug", NULL };

static const struct bm_config_key keys[] = {
	{ "listen.ws", BM_CFG_ADDR, BM_CFG_FIELD(struct tconf, ws),
	  .def = "127.0.0.1:4000", .help = "WebSocket listener" },
	{ "node.name", BM_CFG_STRING, BM_CFG_FIELD(struct tconf, name), .def = "s1",
	  .help = "node id" },
	{ "limits.max_frame", BM_CFG_SIZE, BM_CFG_FIELD(struct tconf, max_frame),
	  .def = "64KiB", .min = 1024, .max = 16 << 20, .reloadable = 1,
	  .help = "largest frame" },
	{ "limits.idle", BM_CFG_DURATION, BM_CFG_FIELD(struct tconf, idle_ms),
	  .def = "30s", .min = 100, .max = 3600000, .reloadable = 1 },
	{ "limits.rate", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate), .def = "100",
	  .min = 1, .max = 100000, .reloadable = 1 },
	{ "workers", BM_CFG_INT, BM_CFG_FIELD(struct tconf, workers), .def = "2",
	  .min = 1, .max = 64 },
	{ "debug", BM_CFG_BOOL, BM_CFG_FIELD(struct tconf, debug), .def = "false",
	  .reloadable = 1 },
	{ "tls.enabled", BM_CFG_BOOL, BM_CFG_FIELD(struct tconf, tls), .def = "true" },
	{ "limits.ratio", BM_CFG_DOUBLE, BM_CFG_FIELD(struct tconf, ratio), .def = "0.5",
	  .dmin = 0, .dmax = 1, .reloadable = 1 },
	{ "log.level", BM_CFG_ENUM, BM_CFG_FIELD(struct tconf, level), .def = "info",
	  .enums = levels, .reloadable = 1 },
	{ "cluster.peers", BM_CFG_LIST, BM_CFG_LIST_FIELD(struct tconf, peers),
	  .def = "a:1,b:2", .list_max = 3 },
	{ "admin.key", BM_CFG_STRING, BM_CFG_FIELD(struct tconf, key), .def = "",
	  .secret = 1, .reloadable = 1 },
	{ NULL }
};

static char err[256];

static int load(struct tconf *c, const char *text)
{
	memset(c, 0, sizeof(*c));
	err[0] = 0;
	return bm_config_load_string(keys, c, text, strlen(text), "x.json", err,
				     sizeof(err));
}

static void test_check_and_defaults(void **state)
{
	struct tconf c;

	assert_int_equal(bm_config_check(keys, err, sizeof(err)), 0);
	memset(&c, 0, sizeof(c));
	assert_int_equal(bm_config_defaults(keys, &c, err, sizeof(err)), 0);
	assert_string_equal(c.ws, "127.0.0.1:4000");
	assert_int_equal(c.max_frame, 65536);
	assert_int_equal(c.idle_ms, 30000);
	assert_int_equal(c.rate, 100);
	assert_int_equal(c.workers, 2);
	assert_int_equal(c.debug, 0);
	assert_true(c.tls);
	assert_true(c.ratio == 0.5);
	assert_int_equal(c.level, 2);
	assert_string_equal(c.peers[0], "a:1");
	assert_string_equal(c.peers[1], "b:2");
	assert_string_equal(c.peers[2], "");
}

static void test_bad_tables(void **state)
{
	struct tconf c;
	const struct bm_config_key dup[] = {
		{ "a", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate) },
		{ "a", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate) },
		{ NULL } };
	const struct bm_config_key nested[] = {
		{ "a", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate) },
		{ "a.b", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate) },
		{ NULL } };
	const struct bm_config_key baddef[] = {
		{ "a", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate), .def = "5", .min = 10,
		  .max = 20 },
		{ NULL } };
	const struct bm_config_key badsize[] = {
		{ "a", BM_CFG_DOUBLE, BM_CFG_FIELD(struct tconf, workers) },
		{ NULL } };
	const struct bm_config_key badname[] = {
		{ "A..b", BM_CFG_INT, BM_CFG_FIELD(struct tconf, rate) },
		{ NULL } };

	assert_int_equal(bm_config_check(dup, err, sizeof(err)), BM_ECONFIG);
	assert_non_null(strstr(err, "duplicate"));
	assert_int_equal(bm_config_check(nested, err, sizeof(err)), BM_ECONFIG);
	assert_int_equal(bm_config_check(baddef, err, sizeof(err)), BM_ECONFIG);
	assert_non_null(strstr(err, "out of range [10, 20]"));
	assert_int_equal(bm_config_check(badsize, err, sizeof(err)), BM_ECONFIG);
	assert_int_equal(bm_config_check(badname, err, sizeof(err)), BM_ECONFIG);
	(void)c;
}

static void test_load_values(void **state)
{
	struct tconf c;

	assert_int_equal(load(&c,
		"{\"listen\":{\"ws\":\"[::1]:0\"},\"limits\":{\"max_frame\":\"16MiB\","
		"\"idle\":\"250ms\",\"rate\":7,\"ratio\":1},\"limits.max_frame\":2048}"), BM_ECONFIG);
	assert_non_null(strstr(err, "'limits.max_frame' is set twice"));

	assert_int_equal(load(&c,
		"{\"listen\":{\"ws\":\"[::1]:0\"},\"limits\":{\"max_frame\":\"16MiB\","
		"\"idle\":\"2m\",\"rate\":7,\"ratio\":1},\"debug\":true,"
		"\"tls\":{\"enabled\":false},\"log\":{\"level\":\"debug\"},"
		"\"cluster.peers\":[\"x\"],\"workers\":64}"), 0);
	assert_string_equal(c.ws, "[::1]:0");
	assert_int_equal(c.max_frame, 16 << 20);
	assert_int_equal(c.idle_ms, 120000);
	assert_int_equal(c.rate, 7);
	assert_true(c.ratio == 1.0);
	assert_int_equal(c.debug, 1);
	assert_false(c.tls);
	assert_int_equal(c.level, 3);
	assert_string_equal(c.peers[0], "x");
	assert_string_equal(c.peers[1], "");
	assert_int_equal(c.workers, 64);
	assert_string_equal(c.name, "s1");

	assert_int_equal(load(&c, "{\"limits\":{\"idle\":5000,\"max_frame\":4096}}"), 0);
	assert_int_equal(c.idle_ms, 5000);
	assert_int_equal(c.max_frame, 4096);
	assert_int_equal(load(&c, "{\"limits\":{\"idle\":\"1h\",\"max_frame\":\"2KB\"}}"), 0);
	assert_int_equal(c.idle_ms, 3600000);
	assert_int_equal(c.max_frame, 2000);
	assert_int_equal(load(&c, "{}"), 0);
	assert_int_equal(c.max_frame, 65536);
}

static void test_errors_name_key(void **state)
{
	struct tconf c;

	assert_int_equal(load(&c, "{\"limits\":{\"max_fram\":1}}"), BM_ECONFIG);
	assert_string_equal(err, "config 'x.json': unknown key 'limits.max_fram'");
	assert_int_equal(load(&c, "{\"nope\":{\"x\":1}}"), BM_ECONFIG);
	assert_string_equal(err, "config 'x.json': unknown key 'nope'");
	assert_int_equal(load(&c, "{\"limits\":5}"), BM_ECONFIG);
	assert_string_equal(err, "config 'x.json': key 'limits': expected object, got integer 5");
	assert_int_equal(load(&c, "{\"limits\":{\"max_frame\":10}}"), BM_ECONFIG);
	assert_string_equal(err,
		"config 'x.json': key 'limits.max_frame': 10 out of range [1024, 16777216]");
	assert_int_equal(load(&c, "{\"limits\":{\"max_frame\":\"64 KiB\"}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "key 'limits.max_frame': expected size"));
	assert_non_null(strstr(err, "got string \"64 KiB\""));
	assert_int_equal(load(&c, "{\"limits\":{\"idle\":\"soon\"}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "key 'limits.idle': expected duration"));
	assert_int_equal(load(&c, "{\"limits\":{\"idle\":-5}}"), BM_ECONFIG);
	assert_int_equal(load(&c, "{\"limits\":{\"idle\":\"99999999999999999999s\"}}"), BM_ECONFIG);
	assert_int_equal(load(&c, "{\"limits\":{\"rate\":1.5}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "expected integer, got number 1.5"));
	assert_int_equal(load(&c, "{\"limits\":{\"ratio\":1.5}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "1.5 out of range [0, 1]"));
	assert_int_equal(load(&c, "{\"debug\":\"yes\"}"), BM_ECONFIG);
	assert_non_null(strstr(err, "key 'debug': expected true or false"));
	assert_int_equal(load(&c, "{\"log\":{\"level\":\"loud\"}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "one of \"error\", \"warn\", \"info\", \"debug\""));
	assert_int_equal(load(&c, "{\"node\":{\"name\":\"12345678\"}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "string of at most 7 bytes"));
	assert_int_equal(load(&c, "{\"node\":{\"name\":\"1234567\"}}"), 0);
	assert_int_equal(load(&c, "{\"cluster\":{\"peers\":[\"a\",\"b\",\"c\",\"d\"]}}"),
			 BM_ECONFIG);
	assert_int_equal(load(&c, "{\"cluster\":{\"peers\":[\"a\",\"\"]}}"), BM_ECONFIG);
	assert_non_null(strstr(err, "item 1"));
	assert_int_equal(load(&c, "{\"cluster\":{\"peers\":[\"a\",1]}}"), BM_ECONFIG);
	assert_int_equal(load(&c, "[1]"), BM_ECONFIG);
	assert_non_null(strstr(err, "top level"));
	assert_int_equal(load(&c, "{\"workers\":4294967297}"), BM_ECONFIG);
}

static void test_addresses(void **state)
{
	static const char *const good[] = { "127.0.0.1:0", "0.0.0.0:65535",
		"[::1]:80", "localhost:4000", "a-b.example.com:1", NULL };
	static const char *const bad[] = { "127.0.0.1", ":80", "1.2.3.4:65536",
		"1.2.3.256:1", "::1:80", "[::1]80", "host:-1", "ho st:1", "-a:1",
		"a:1x", "[zz]:1", "a..b:1", NULL };
	char host[64];
	uint16_t port;
	struct tconf c;
	char doc[128];

	for (int i = 0; good[i]; i++) {
		assert_int_equal(bm_config_addr_split(good[i], host, sizeof(host), &port), 0);
		snprintf(doc, sizeof(doc), "{\"listen\":{\"ws\":\"%s\"}}", good[i]);
		assert_int_equal(load(&c, doc), 0);
	}
	for (int i = 0; bad[i]; i++) {
		assert_int_not_equal(bm_config_addr_split(bad[i], host, sizeof(host), &port), 0);
		snprintf(doc, sizeof(doc), "{\"listen\":{\"ws\":\"%s\"}}", bad[i]);
		assert_int_equal(load(&c, doc), BM_ECONFIG);
		assert_non_null(strstr(err, "expected address"));
	}
	assert_int_equal(bm_config_addr_split("[::1]:8080", host, sizeof(host), &port), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 8080);
	assert_int_equal(bm_config_addr_split("127.0.0.1:0", host, sizeof(host), &port), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_int_equal(port, 0);
}

static void test_syntax_error_position(void **state)
{
	struct tconf c;

	assert_int_equal(load(&c, "{\n  \"debug\": true,\n  \"workers\": }\n"), BM_ECONFIG);
	assert_non_null(strstr(err, "config 'x.json':3:"));
	assert_int_equal(load(&c, ""), BM_ECONFIG);
	assert_int_equal(load(&c, "{\"a\":1,\"a\":2}"), BM_ECONFIG);
}

static char tmpdir[64];

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void test_file_and_reload(void **state)
{
	struct tconf c, saved;
	struct bm_config_changes ch;
	char path[128], joined[128];
	int rc;

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/bm_cfg_XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	snprintf(path, sizeof(path), "%s/x.json", tmpdir);

	memset(&c, 0, sizeof(c));
	rc = bm_config_load_file(keys, &c, path, err, sizeof(err));
	assert_int_equal(rc, BM_ECONFIG);
	assert_non_null(strstr(err, path));

	write_file(path, "{\"limits\":{\"rate\":5}}");
	assert_int_equal(bm_config_load_file(keys, &c, path, err, sizeof(err)), 0);
	assert_int_equal(c.rate, 5);
	c.not_in_table = &c;

	/* reloadable changes are applied and listed */
	write_file(path, "{\"limits\":{\"rate\":6,\"idle\":\"1s\"},\"log\":{\"level\":\"warn\"}}");
	rc = bm_config_reload(keys, &c, sizeof(c), path, &ch, err, sizeof(err));
	assert_int_equal(rc, 0);
	assert_int_equal(c.rate, 6);
	assert_int_equal(c.idle_ms, 1000);
	assert_ptr_equal(c.not_in_table, &c);
	bm_config_changes_join(&ch, joined, sizeof(joined));
	assert_string_equal(joined, "limits.idle, limits.rate, log.level");

	/* same file: nothing changed */
	rc = bm_config_reload(keys, &c, sizeof(c), path, &ch, err, sizeof(err));
	assert_int_equal(rc, 0);
	assert_int_equal(ch.n, 0);
	bm_config_changes_join(&ch, joined, sizeof(joined));
	assert_string_equal(joined, "none");

	/* a bad value keeps the old config */
	saved = c;
	write_file(path, "{\"limits\":{\"rate\":0}}");
	rc = bm_config_reload(keys, &c, sizeof(c), path, &ch, err, sizeof(err));
	assert_int_equal(rc, BM_ECONFIG);
	assert_non_null(strstr(err, "limits.rate"));
	assert_memory_equal(&c, &saved, sizeof(c));

	/* a non-reloadable change keeps the old config and names the key */
	write_file(path, "{\"limits\":{\"rate\":9},\"workers\":3}");
	bm_log_set_level(BM_LOG_ERROR);
	rc = bm_config_reload(keys, &c, sizeof(c), path, &ch, err, sizeof(err));
	bm_log_set_level(BM_LOG_INFO);
	assert_int_equal(rc, BM_ESTATE);
	assert_non_null(strstr(err, "'workers'"));
	assert_non_null(strstr(err, "restart"));
	assert_memory_equal(&c, &saved, sizeof(c));

	/* syntax error gives file:line:column */
	write_file(path, "{\n\"workers\" 3}");
	rc = bm_config_reload(keys, &c, sizeof(c), path, &ch, err, sizeof(err));
	assert_int_equal(rc, BM_ECONFIG);
	{
		char want[160];
		snprintf(want, sizeof(want), "config '%s':2:", path);
		assert_non_null(strstr(err, want));
	}
	unlink(path);
	rmdir(tmpdir);
}

static void test_dump_roundtrip(void **state)
{
	struct tconf c, d;
	struct bm_buf out = BM_BUF_INIT;
	json_t *j;

	assert_int_equal(load(&c, "{\"limits\":{\"idle\":\"250ms\",\"max_frame\":\"3000B\"},"
			     "\"admin\":{\"key\":\"sekrit\"}}"), 0);
	j = bm_config_to_json(keys, &c);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "limits"),
							      "idle")), "250ms");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "admin"),
							      "key")), "(redacted)");
	json_decref(j);
	assert_int_equal(bm_config_dump(keys, &c, &out), 0);
	assert_non_null(strstr((char *)out.data, "\"max_frame\": \"3000B\""));
	assert_non_null(strstr((char *)out.data, "\"peers\": ["));
	/* The dump loads back to the same values (except the redacted secret). */
	assert_int_equal(load(&d, (char *)out.data), 0);
	memcpy(d.key, c.key, sizeof(d.key));
	assert_memory_equal(&c, &d, sizeof(c));
	bm_buf_release(&out);

	memset(&c, 0, sizeof(c));
	assert_int_equal(bm_config_defaults(keys, &c, err, sizeof(err)), 0);
	assert_int_equal(bm_config_dump(keys, &c, &out), 0);
	assert_non_null(strstr((char *)out.data, "\"idle\": \"30s\""));
	assert_non_null(strstr((char *)out.data, "\"max_frame\": \"64KiB\""));
	bm_buf_release(&out);
}

static void test_help(void **state)
{
	struct bm_buf out = BM_BUF_INIT;

	assert_int_equal(bm_config_help(keys, &out), 0);
	assert_non_null(strstr((char *)out.data,
		"limits.max_frame  (size, default \"64KiB\", range [1KiB, 16MiB], reloadable)\n"
		"    largest frame\n"));
	assert_non_null(strstr((char *)out.data, "log.level  (enum, default \"info\", "
					     "one of error, warn, info, debug, reloadable)"));
	assert_non_null(strstr((char *)out.data, "listen.ws  (address"));
	assert_non_null(strstr((char *)out.data, "restart to change"));
	bm_buf_release(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_and_defaults),
		cmocka_unit_test(test_bad_tables),
		cmocka_unit_test(test_load_values),
		cmocka_unit_test(test_errors_name_key),
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_syntax_error_position),
		cmocka_unit_test(test_file_and_reload),
		cmocka_unit_test(test_dump_roundtrip),
		cmocka_unit_test(test_help),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
