package issuer

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenwarden/tokenwarden/internal/natsconn"
	"github.com/tokenwarden/tokenwarden/revocation"
)

// A revocation event lives only as long as the access tokens it can match;
// a refresh token lives far longer. So a sid, sub, client or all revocation
// also leaves a deny record in the KV bucket <prefix>_denied, kept as long
// as any refresh-token family can live (nats.refresh_retention). The record
// is written before the event is published, so it is durable whenever the
// admin API answers 201, whichever replica answered and whatever happens to
// it next. Every replica follows the bucket into memory, and refresh checks
// a family against it as if the family were a token issued at login.
type denyList struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu     sync.RWMutex
	m      map[string]int64 // key → issued_before (0 for sid: no time bound)
	synced atomic.Bool      // the initial values have been read
}

func newDenyList(log *slog.Logger) *denyList { return &denyList{log: log, m: map[string]int64{}} }

// denyKey encodes a value (any string) into a valid KV key.
func denyKey(kind revocation.Kind, value string) string {
	if value == "" {
		return string(kind) // all
	}
	return string(kind) + "." + base64.RawURLEncoding.EncodeToString([]byte(value))
}

// add records e; a record already at least as wide is left alone. jti
// events need none: access tokens do not outlive their event.
func (d *denyList) add(ctx context.Context, e *revocation.Event) error {
	if e.Kind == revocation.KindJTI || e.Kind == revocation.KindKID {
		return nil // neither concerns a refresh-token family
	}
	key := denyKey(e.Kind, e.Value)
	val := []byte(strconv.FormatInt(e.IssuedBefore, 10))
	for range 10 {
		entry, err := d.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = d.kv.Create(ctx, key, val)
		case err != nil:
			return fmt.Errorf("read deny record: %w", err)
		default:
			if have, perr := strconv.ParseInt(string(entry.Value()), 10, 64); perr == nil && have >= e.IssuedBefore {
				d.remember(key, have)
				return nil
			}
			_, err = d.kv.Update(ctx, key, val, entry.Revision())
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("store deny record: %w", err)
		}
		d.remember(key, e.IssuedBefore)
		return nil
	}
	return errors.New("store deny record: too many concurrent writers")
}

func (d *denyList) remember(key string, before int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if have, ok := d.m[key]; !ok || before > have {
		d.m[key] = before
	}
}

// covers reports whether a deny record ends family f.
func (d *denyList) covers(f *family) (bool, string) {
	created := f.CreatedAt.Unix()
	d.mu.RLock()
	defer d.mu.RUnlock()
	if _, ok := d.m[denyKey(revocation.KindSID, f.SessionID)]; ok {
		return true, revocation.ReasonSession
	}
	if b, ok := d.m[denyKey(revocation.KindSub, f.Subject)]; ok && created <= b {
		return true, revocation.ReasonSubject
	}
	if b, ok := d.m[denyKey(revocation.KindClient, f.ClientID)]; ok && created <= b {
		return true, revocation.ReasonClient
	}
	if b, ok := d.m[denyKey(revocation.KindAll, "")]; ok && created <= b {
		return true, revocation.ReasonAll
	}
	return false, ""
}

// watch follows the bucket (records of other replicas, and expiry).
func (d *denyList) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.kv.WatchAll(ctx)
		if err != nil {
			d.log.Warn("watch deny records", "err", err)
			natsconn.Sleep(ctx, time.Second)
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				d.synced.Store(true)
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValuePut:
				if b, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
					d.remember(e.Key(), b)
				}
			default: // expired or deleted
				d.mu.Lock()
				delete(d.m, e.Key())
				d.mu.Unlock()
			}
		}
		_ = w.Stop()
	}
}
