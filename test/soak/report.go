package main

import (
	"fmt"
	"io"
	"math"
	"time"

	"github.com/tokenwarden/tokenwarden/internal/loadtest"
)

// report prints the figures and the verdict; it returns true if the run failed.
func (d *driver) report(stopErr error) (failed bool) {
	out := d.o.out
	var reasons []string
	fail := func(format string, args ...any) { reasons = append(reasons, fmt.Sprintf(format, args...)) }
	ms := func(v time.Duration) string { return fmt.Sprintf("%.2fms", float64(v)/float64(time.Millisecond)) }

	printf(out, "\nverify latency per minute, from the intended send time (open loop at %d/s):\n", d.o.rate)
	printf(out, "  %-13s %9s %8s %9s %9s %9s  %-13s  %s\n", "minute", "requests", "req/s", "p50", "p99", "max", "soak's stall", "sidecar's own p99 (verification alone, no HTTP)")
	d.latMu.Lock()
	var all []time.Duration
	for i, l := range d.lat {
		span := time.Minute
		if rest := d.o.duration - time.Duration(i)*time.Minute; rest < span {
			span = rest
		}
		all = append(all, l...)
		st := loadtest.Summarize(l)
		label := fmt.Sprintf("%d (%s)", i+1, span.Round(time.Second))
		printf(out, "  %-13s %9d %8.0f %9s %9s %9s  %-13s  %s\n", label, st.N, float64(st.N)/span.Seconds(), ms(st.P50), ms(st.P99), ms(st.Max), ms(d.stall[i]),
			d.ownP99(time.Duration(i)*time.Minute, time.Duration(i)*time.Minute+span))
	}
	d.latMu.Unlock()
	total := loadtest.Summarize(all)
	printf(out, "  %-13s %9d %8.0f %9s %9s %9s  %-13s  %s\n", "all", total.N, float64(total.N)/d.o.duration.Seconds(), ms(total.P50), ms(total.P99), ms(total.Max),
		"", d.ownP99(0, d.o.duration))

	errs := d.transportErrors.Load() + d.badStatus.Load()
	printf(out, "\nrequests: %d sent, %d errors (transport %d, unexpected status %d), %d not sent for want of a live token\n",
		d.requests.Load(), errs, d.transportErrors.Load(), d.badStatus.Load(), d.noToken.Load())
	printf(out, "verify answers (load and revocation probes): valid accepted %d, valid REJECTED %d; revoked: rejected %d, accepted before the sidecar had applied the event %d, accepted AFTER %d\n",
		d.validAccepted.Load(), d.validRejected.Load(), d.revokedRejected.Load(), d.revokedEarlyAccepted.Load(), d.revokedAccepted.Load())
	if n := d.validRejected.Load() + d.revokedAccepted.Load(); n > 0 {
		fail("%d wrong verify answers", n)
	}
	if errs > 0 {
		fail("%d failed verify requests", errs)
	}
	if d.requests.Load() == 0 {
		fail("no verify requests were sent")
	}
	if n := d.noToken.Load(); n*100 > d.requests.Load() {
		fail("%d requests not sent for want of a live token (more than 1%%)", n)
	}

	d.probeMu.Lock()
	prop := loadtest.Summarize(d.probes)
	d.probeMu.Unlock()
	nrev := d.revocations[0].Load() + d.revocations[1].Load() + d.revocations[2].Load()
	printf(out, "revocations: %d stored (jti %d, sid %d, sub %d), %d failed; sent → rejected by the sidecar p50 %s p99 %s max %s; not applied within %s: %d\n",
		nrev, d.revocations[0].Load(), d.revocations[1].Load(), d.revocations[2].Load(), d.revocationErrors.Load(),
		ms(prop.P50), ms(prop.P99), ms(prop.Max), applyDeadline, d.notApplied.Load())
	if n := d.revocationErrors.Load() + d.notApplied.Load(); n > 0 {
		fail("%d revocations failed or not applied", n)
	}
	if d.o.revokeRate > 0 && nrev == 0 {
		fail("no revocation was made")
	}
	printf(out, "tokens: %d logins, %d refreshes, %d failed; key rotations: %d, %d failed\n",
		d.logins.Load(), d.refreshes.Load(), d.grantErrors.Load(), d.rotations.Load(), d.rotationErrors.Load())
	if n := d.grantErrors.Load() + d.rotationErrors.Load() + d.sampleErrors.Load(); n > 0 {
		fail("%d token, rotation or sampling requests failed", n)
	}
	if d.rotations.Load() == 0 {
		fail("no key rotation was made")
	}

	if first, last := d.first, d.last; first == nil || last == nil {
		fail("no memory figures (the run did not reach the end of the warm-up and the end)")
	} else {
		printf(out, "sidecar JWKS: bundle sequence %.0f → %.0f, %.0f keys at the end; events dropped %.0f, bundles rejected %.0f\n",
			first.scBundleSeq, last.scBundleSeq, last.scKeys, last.scDropped, last.scRejectedBun)
		if last.scDropped > 0 || last.scRejectedBun > 0 {
			fail("the sidecar dropped events or rejected bundles")
		}
		if d.rotations.Load() > 0 && last.scBundleSeq <= first.scBundleSeq {
			fail("the sidecar's bundle sequence did not move after the warm-up though keys rotated")
		}
		// Live revocation events and token-cache entries grow for a while
		// after the warm-up by design (events live access TTL + leeway, the
		// cache keeps expired entries until a shard is full); each added one
		// is allowed bytesPerRecord.
		records := max(0, last.scEvents-first.scEvents) + max(0, last.scCache-first.scCache)
		printf(out, "sidecar: live revocation events %.0f → %.0f, token-cache entries %.0f → %.0f, heap in use %.1f → %.1f MB\n",
			first.scEvents, last.scEvents, first.scCache, last.scCache, first.scHeap/(1<<20), last.scHeap/(1<<20))
		// A leak raises the floor; a transient (an argon2id buffer of 19 MiB
		// in the issuer, a request in flight) only a peak. So the rules
		// compare the lowest reading of the first and of the last window.
		w := min(3*d.o.sampleEvery, (d.o.duration-d.o.warmup)/4)
		d.samplesMu.Lock()
		var head, tail []sample
		for _, s := range d.samples {
			if s.at >= first.at && s.at < first.at+w {
				head = append(head, s)
			}
			if s.at > last.at-w && s.at <= last.at {
				tail = append(tail, s)
			}
		}
		d.samplesMu.Unlock()
		printf(out, "leak rules: lowest reading in the %s after the warm-up (%d samples) against the lowest in the last %s (%d samples)\n",
			w.Round(time.Second), len(head), w.Round(time.Second), len(tail))
		d.checkProcess(out, "sidecar", first, last, head, tail, func(s sample) (float64, float64) { return s.scRSS, s.scGor },
			records*bytesPerRecord/1024, fmt.Sprintf("%.0f added events and cache entries × %d KiB", records, bytesPerRecord>>10), fail)
		// Each password login runs argon2id with a 19 MiB buffer, and the
		// Go heap goal is twice the live heap: the issuer's footprint moves
		// by up to 2 × 19 MiB with the phase of logins against GC.
		d.checkProcess(out, "issuer", first, last, head, tail, func(s sample) (float64, float64) { return s.isRSS, s.isGor },
			argon2Allowance>>10, "2 × 19 MiB argon2id at GOGC 100", fail)
		printf(out, "issuer: heap in use, lowest %.1f → %.1f MB\n", minOf(head, func(s sample) float64 { return s.isHeap })/(1<<20),
			minOf(tail, func(s sample) float64 { return s.isHeap })/(1<<20))
		printf(out, "nats-server: RSS %.1f → %.1f MB (not checked: JetStream's own caches)\n", first.natsRSS/1024, last.natsRSS/1024)
	}
	if stopErr != nil {
		fail("stop: %v", stopErr)
	}

	d.problemsMu.Lock()
	if d.nProblems > 0 {
		printf(out, "problems (%d, first %d):\n", d.nProblems, len(d.problems))
		for _, p := range d.problems {
			printf(out, "%s\n", "  "+p)
		}
	}
	d.problemsMu.Unlock()
	if len(reasons) == 0 {
		printf(out, "%s\n", "PASS")
		return false
	}
	printf(out, "%s\n", "FAIL:")
	for _, r := range reasons {
		printf(out, "%s\n", "  - "+r)
	}
	return true
}

// ownP99 is the sidecar's p99 of verification alone (its histogram, no
// HTTP) between the samples nearest to from and to (since the load started).
func (d *driver) ownP99(from, to time.Duration) string {
	d.samplesMu.Lock()
	defer d.samplesMu.Unlock()
	var a, b []loadtest.Bucket // a: nil, nothing before the load
	tol := d.o.sampleEvery / 2
	for _, s := range d.samples {
		if s.at <= from+tol && from > 0 {
			a = s.scVerify
		}
		if s.at <= to+tol {
			b = s.scVerify
		}
	}
	q := loadtest.Quantile(0.99, a, b)
	switch {
	case math.IsNaN(q):
		return "-"
	case math.IsInf(q, 1):
		last := b[max(0, len(b)-2)].LE
		return fmt.Sprintf("> %s", time.Duration(last*float64(time.Second)))
	}
	return fmt.Sprintf("≤ %s", time.Duration(q*float64(time.Second)))
}

func minOf(ss []sample, get func(sample) float64) float64 {
	m := math.Inf(1)
	for _, s := range ss {
		m = min(m, get(s))
	}
	return m
}

// checkProcess applies the leak rules to one process: from the start
// window's floor to the end window's, goroutines may grow by
// -goroutine-slack and resident memory by -rss-growth percent plus
// -rss-slack-mb plus extraKiB for what legitimately varies (extraWhy).
func (d *driver) checkProcess(out io.Writer, name string, first, last *sample, head, tail []sample,
	get func(sample) (rss, gor float64), extraKiB float64, extraWhy string, fail func(string, ...any)) {
	floor := func(ss []sample) (rss, gor float64) {
		rss, gor = math.Inf(1), math.Inf(1)
		for _, s := range ss {
			r, g := get(s)
			rss, gor = min(rss, r), min(gor, g)
		}
		return rss, gor
	}
	rss0, gor0 := floor(head)
	rss1, gor1 := floor(tail)
	firstRSS, firstGor := get(*first)
	lastRSS, lastGor := get(*last)
	allowKiB := rss0*d.o.rssGrowthPct/100 + d.o.rssSlackMB*1024 + extraKiB
	growth := rss1 - rss0
	verdict := "ok"
	if growth > allowKiB {
		verdict = "LEAK?"
		fail("%s RSS grew %.1f MB after the warm-up, more than the %.1f MB allowed", name, growth/1024, allowKiB/1024)
	}
	printf(out, "%s: RSS %.1f → %.1f MB; lowest %.1f → %.1f MB (%+.1f MB, %+.0f%%; allowed +%.1f MB = %g%% + %g MB + %s) %s\n",
		name, firstRSS/1024, lastRSS/1024, rss0/1024, rss1/1024, growth/1024, 100*growth/max(rss0, 1), allowKiB/1024,
		d.o.rssGrowthPct, d.o.rssSlackMB, extraWhy, verdict)
	verdict = "ok"
	if gor1 > gor0+float64(d.o.goroutineSlack) {
		verdict = "LEAK?"
		fail("%s goroutines grew from %.0f to %.0f", name, gor0, gor1)
	}
	printf(out, "%s: goroutines %.0f → %.0f; lowest %.0f → %.0f (allowed +%d) %s\n", name, firstGor, lastGor, gor0, gor1, d.o.goroutineSlack, verdict)
}
