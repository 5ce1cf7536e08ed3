package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// printTable writes the results as Markdown: one column per N, then the
// sidecar processes' memory, then the warnings the sidecars logged.
func printTable(w io.Writer, results []*result, rss *rssResult, o options) {
	p := func(format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }
	if len(results) > 0 {
		head := []string{"N sidecars"}
		for _, r := range results {
			head = append(head, thousands(r.n))
		}
		p("\n| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
		row := func(what string, f func(r *result) string) {
			cells := []string{what}
			for _, r := range results {
				cells = append(cells, f(r))
			}
			p("| %s |\n", strings.Join(cells, " | "))
		}
		herd := func(f func(h *herdResult) string) func(r *result) string {
			return func(r *result) string {
				if r.herd == nil {
					return "-"
				}
				return f(r.herd)
			}
		}
		row("worker processes × sidecars", func(r *result) string {
			return fmt.Sprintf("%d × %s", r.workers, thousands((r.n+r.workers-1)/r.workers))
		})
		row("machine load average, start / end of the N", func(r *result) string {
			return fmt.Sprintf("%.1f / %.1f", r.load[0], r.load[1])
		})
		row("cold start ("+rampText(o.ramp)+"): every sidecar ready (p50 / p99)", func(r *result) string {
			if r.neverReady > 0 {
				return fmt.Sprintf("**did not converge: %s of %s not ready after %s** (of those ready, p50 %s)",
					thousands(r.neverReady), thousands(r.n), r.readyWithin, round(r.ready.P50))
			}
			return fmt.Sprintf("%s (%s / %s)", round(r.ready.Max), round(r.ready.P50), round(r.ready.P99))
		})
		row("cold start: JetStream API requests (errors)", func(r *result) string {
			return fmt.Sprintf("%s (%s)", thousands(int(min(r.startAPI, 1<<31))), thousands(int(min(r.startErrs, 1<<31))))
		})
		row("NATS RSS, 3 nodes (largest node)", func(r *result) string {
			return fmt.Sprintf("%s (%s)", mb(r.natsRSS), mb(r.natsMax))
		})
		row("NATS RSS per sidecar", func(r *result) string {
			if r.natsRSS == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f KB", float64(r.natsRSS-r.natsBase)/float64(r.n)/1000)
		})
		idle := func(f func(r *result) string) func(r *result) string {
			return func(r *result) string {
				if !r.idleDone {
					return "-"
				}
				return f(r)
			}
		}
		prop := func(f func(r *result) string) func(r *result) string {
			return func(r *result) string {
				if !r.propDone {
					return "-"
				}
				return f(r)
			}
		}
		row("NATS CPU idle, 3 nodes", idle(func(r *result) string { return pct(r.natsIdle) }))
		row("sidecars' own CPU idle (in-process, all N)", idle(func(r *result) string { return pct(r.sideIdle) }))
		row("idle: messages through NATS per s (JetStream API requests per s)", idle(func(r *result) string {
			return fmt.Sprintf("%s (%s)", thousands(int(r.idleMsgs)), thousands(int(r.idleAPI)))
		}))
		row("consumers: revocation stream / bundle bucket", idle(func(r *result) string {
			return thousands(r.consRev) + " / " + thousands(r.consJWKS)
		}))
		row("revocation from the 201: p50 / p99 / max", func(r *result) string { return r.prop.String() })
		row("revocation from the request: p50 / p99 / max", func(r *result) string { return r.propReq.String() })
		// The events' CPU is what their phase used beyond the idle rate:
		// when the idle rate itself swings more than that, there is no
		// figure.
		perEvent := func(d time.Duration, n int) string {
			if d <= 0 {
				return "below the idle noise"
			}
			return fmt.Sprintf("%s (%s)", round(d), round(d/time.Duration(n)))
		}
		row("NATS CPU per revocation event (per sidecar)", prop(func(r *result) string { return perEvent(r.natsEvent, r.n) }))
		row("sidecars' CPU per event (in-process, per sidecar)", prop(func(r *result) string { return perEvent(r.sideEvent, r.n) }))
		row("key rotation: new bundle from the 200, p50 / p99 / max", func(r *result) string { return r.rotate.String() })
		row("herd: node killed (its clients)", herd(func(h *herdResult) string {
			return fmt.Sprintf("%s, stream leader (%s)", h.victim, thousands(h.victimClients))
		}))
		row("herd: reconnect from the kill, p50 / p99 / max (sidecars)", herd(func(h *herdResult) string {
			s := fmt.Sprintf("%s (%s)", h.reconnect, thousands(h.disconnected))
			if h.unreconnected > 0 {
				s += fmt.Sprintf(", %d not back", h.unreconnected)
			}
			return s
		}))
		row("herd: revocation while down, from the kill (its 201 came at)", herd(func(h *herdResult) string {
			return fmt.Sprintf("%s (%s)", h.revDown, round(h.revDown201))
		}))
		row("herd: the same from its 201", herd(func(h *herdResult) string { return h.revDownAfter.String() }))
		row("herd: rotation while down, from the kill (its 200 came at)", herd(func(h *herdResult) string {
			return fmt.Sprintf("%s (%s)", h.bundleDown, round(h.rotate200))
		}))
		row("herd: every sidecar caught up, from the kill", herd(func(h *herdResult) string {
			if h.bundleMissing > 0 {
				return fmt.Sprintf("**no: %s without the new bundle after 3 min**", thousands(h.bundleMissing))
			}
			return round(h.caughtUp).String()
		}))
		row("herd: node healthy after its restart", herd(func(h *herdResult) string { return round(h.nodeBack).String() }))
		row("herd: revocation after the restart, from the 201", herd(func(h *herdResult) string { return h.revUp.String() }))
		row("herd: sidecars not ready at a 1 s reading", herd(func(h *herdResult) string { return thousands(h.everNotReady) }))
		row("fresh cluster: STREAM.INFO of the revocation stream per s (32 callers)", func(r *result) string {
			if r.capacity == nil {
				return "-"
			}
			return thousands(int(r.capacity.streamInfo))
		})
		row("fresh cluster: idle probe reads (batched direct gets) of the revocation stream per s (32 callers)", func(r *result) string {
			if r.capacity == nil {
				return "-"
			}
			return thousands(int(r.capacity.directGets))
		})
		row("with the N sidecars idle: STREAM.INFO per s (32 callers)", idle(func(r *result) string {
			if r.capacity == nil {
				return "-"
			}
			return thousands(int(r.capacity.loadedInfo))
		}))
		floor := func(f func(f *floorResult) string) func(r *result) string {
			return func(r *result) string {
				if r.floor == nil {
					return "-"
				}
				return f(r.floor)
			}
		}
		row("floor, N plain connections: NATS RSS per connection", floor(func(f *floorResult) string {
			return fmt.Sprintf("%.0f KB", float64(f.natsRSS-f.natsBase)/float64(f.n)/1000)
		}))
		row("floor, N plain connections: NATS CPU idle (messages per s)", floor(func(f *floorResult) string {
			return fmt.Sprintf("%s (%s)", pct(f.natsIdle), thousands(int(f.idleMsgs)))
		}))
		row("floor: one core message to N connections, p50 / p99 / max", floor(func(f *floorResult) string { return f.fanout.String() }))
		row("missed events (of deliveries)", func(r *result) string {
			return fmt.Sprintf("%d (of %s)", r.missed, thousands(r.deliveries))
		})
		row("in-process RSS per sidecar (workers' RSS ÷ N)", func(r *result) string {
			if r.workerRSS == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f KB", float64(r.workerRSS)/float64(r.n)/1000)
		})
	}
	if rss != nil && len(rss.idle) > 0 {
		p("\n| %d `tokenwarden sidecar` processes | p50 | max |\n| --- | --- | --- |\n", rss.procs)
		p("| RSS idle (%s after all were ready) | %s | %s |\n", rss.idleFor, mb(pctBytes(rss.idle, 0.5)), mb(pctBytes(rss.idle, 1)))
		p("| RSS peak under load (%d /verify/s each over %d tokens, %d revocations/s, %s) | %s | %s |\n",
			rss.rate, rss.tokens, rss.revocationRate, rss.loadFor, mb(pctBytes(rss.load, 0.5)), mb(pctBytes(rss.load, 1)))
		if len(rss.parts) > 0 {
			m := medianParts(rss.parts)
			p("| idle RSS made of: anonymous (Go heap in use / stacks / all the Go runtime holds, less released) | %s (%s / %s / %s) | |\n",
				mb(m.anon), mb(m.heapInuse), mb(m.stack), mb(m.runtime-m.heapReleased))
			p("| idle RSS made of: file-backed (the executable's pages touched, shared by every process of the same executable) | %s | |\n", mb(m.file))
			p("| idle PSS (the shared pages divided among the %d processes) | %s | |\n", rss.procs, mb(m.pss))
			p("| goroutines, idle | %d | |\n", m.goroutines)
		}
		p("\n%s requests, %d not 200; %d revocations.\n", thousands(int(rss.requests)), rss.bad, rss.revocations)
	}
	for _, r := range results {
		for _, l := range []struct {
			who string
			m   map[string]int
		}{{"the sidecars", r.warnings}, {"the NATS nodes", r.natsWarnings}} {
			if len(l.m) == 0 {
				continue
			}
			p("\nN=%s: warnings %s logged:\n", thousands(r.n), l.who)
			for _, m := range slices.Sorted(maps.Keys(l.m)) {
				p("  %6d  %s\n", l.m[m], m)
			}
		}
	}
	p("\nscale -n %s -per-worker %d -events %d -rotations %d -idle %s -ramp %g -herd=%t -rss-sample %d -rss-idle %s -rss-load %s -rss-rate %d\n",
		joinInts(o.counts), o.perWorker, o.events, o.rotations, o.idle, o.ramp, o.herd, o.rssSample, o.rssIdle, o.rssLoad, o.rssRate)
}

func (s stats) String() string {
	if s.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s / %s", round(s.P50), round(s.P99), round(s.Max))
}

func mb(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/1e6) }

func pct(cores float64) string { return fmt.Sprintf("%.1f%% of a core", cores*100) }

// thousands writes n with comma separators, as the docs do.
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
