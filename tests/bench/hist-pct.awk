# hist-pct.awk: p50, p90 and p99 of a Prometheus histogram from its buckets,
# interpolated linearly inside the bucket that holds each, as one line:
# "LABEL n=N p50=..ms p90=..ms p99=..ms" (nothing when N is 0).
#
# Input: "le count" lines, cumulative, in order (le in seconds, "+Inf"
# last).  Optionally a first block of the same lines and a line "--": a
# baseline subtracted bucket by bucket (the histogram read before a run).
#
#   awk -v label="commit half_load" -f tests/bench/hist-pct.awk
$1 == "--" { n = 0; for (k in c) base[le[k]] = c[k]; delete c; next }
{ le[n] = $1; c[n] = $2; n++ }
function q(p,   t, i, lo, cl) {
	t = p * c[n - 1]; lo = 0; cl = 0
	for (i = 0; i < n; i++) {
		if (c[i] >= t) {
			if (le[i] == "+Inf")
				return lo
			return lo + (le[i] - lo) * (t - cl) / (c[i] - cl > 0 ? c[i] - cl : 1)
		}
		lo = le[i]; cl = c[i]
	}
	return lo
}
END {
	for (i = 0; i < n; i++)
		c[i] -= base[le[i]]
	if (n && c[n - 1] > 0)
		printf "%s n=%d p50=%.3fms p90=%.3fms p99=%.3fms\n", label, c[n - 1],
			q(0.5) * 1e3, q(0.9) * 1e3, q(0.99) * 1e3
}
