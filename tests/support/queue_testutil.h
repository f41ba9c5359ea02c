/*
 * queue_testutil.h - helpers shared by the BimipQueue tests, the fuzz
 * target and nothing else: temporary directories, copying a queue
 * directory (a "crash snapshot" of what is on disk), deterministic payloads.
 */
#ifndef QUEUE_TESTUTIL_H
#define QUEUE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* mkdtemp under $TMPDIR (or /tmp) with the given prefix; the returned
 * string is malloc'ed, NULL on failure. */
char *qt_tempdir(const char *prefix);
/* Removes dir and everything below it; 0 or -1. */
int qt_rmtree(const char *dir);
/* Copies the regular files of src into dst (created); 0 or -1. */
int qt_copydir(const char *src, const char *dst);
/* Fills p with n bytes derived from (stream index, offset). */
void qt_payload(uint8_t *p, size_t n, unsigned stream, uint64_t offset);
/* Payload length used for (stream, offset) by the crash tests. */
size_t qt_payload_len(unsigned stream, uint64_t offset);
/* Path of the n-th segment file (sorted by name) of dir into out;
 * returns the number of segments, or -1. */
int qt_segment(const char *dir, int n, char *out, size_t cap);
/* Size of a file, or -1. */
long long qt_filesize(const char *path);

#endif
