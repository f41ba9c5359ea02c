#include "queue_testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *qt_tempdir(const char *prefix)
{
	const char *tmp = getenv("TMPDIR");
	char *p;

	if (!tmp || !*tmp)
		tmp = "/tmp";
	if (asprintf(&p, "%s/%s.XXXXXX", tmp, prefix) == -1)
		return NULL;
	if (!mkdtemp(p)) {
		free(p);
		return NULL;
	}
	return p;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

int qt_rmtree(const char *dir)
{
	return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int qt_copydir(const char *src, const char *dst)
{
	DIR *d = opendir(src);
	struct dirent *e;
	char buf[65536];
	int rc = 0;

	if (!d || (mkdir(dst, 0755) == -1))
		goto fail;
	while (!rc && (e = readdir(d))) {
		char a[4096], b[4096];
		int in, out;
		ssize_t n;

		if (e->d_name[0] == '.' || !strcmp(e->d_name, "LOCK"))
			continue;
		snprintf(a, sizeof(a), "%s/%s", src, e->d_name);
		snprintf(b, sizeof(b), "%s/%s", dst, e->d_name);
		in = open(a, O_RDONLY);
		out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (in == -1 || out == -1)
			rc = -1;
		while (!rc && (n = read(in, buf, sizeof(buf))) > 0)
			if (write(out, buf, (size_t)n) != n)
				rc = -1;
		if (in != -1)
			close(in);
		if (out != -1)
			close(out);
	}
	closedir(d);
	return rc;
fail:
	if (d)
		closedir(d);
	return -1;
}

void qt_payload(uint8_t *p, size_t n, unsigned stream, uint64_t offset)
{
	uint64_t x = (offset + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)stream << 32);

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

size_t qt_payload_len(unsigned stream, uint64_t offset)
{
	return 1 + (size_t)((offset * 131 + stream * 17) % 700);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int qt_segment(const char *dir, int n, char *out, size_t cap)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *names[4096];
	int cnt = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)) && cnt < 4096) {
		size_t l = strlen(e->d_name);
		if (l > 4 && !strcmp(e->d_name + l - 4, ".seg"))
			names[cnt++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, (size_t)cnt, sizeof(names[0]), cmp_str);
	if (n >= 0 && n < cnt && out)
		snprintf(out, cap, "%s/%s", dir, names[n]);
	for (int i = 0; i < cnt; i++)
		free(names[i]);
	return cnt;
}

long long qt_filesize(const char *path)
{
	struct stat st;

	if (stat(path, &st) == -1)
		return -1;
	return (long long)st.st_size;
}
