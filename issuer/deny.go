package issuer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
	nc  *nats.Conn // for reads from the bucket's leader (readLeader)
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

// denyRule is one deny record that could end a family: its key, and the
// reason a refused refresh gives.
type denyRule struct {
	key, reason string
	anyTime     bool // sid: the record ends the family whenever it was created
}

// rules are the records that could end f, most specific first.
func rules(f *family) [4]denyRule {
	return [4]denyRule{
		{denyKey(revocation.KindSID, f.SessionID), revocation.ReasonSession, true},
		{denyKey(revocation.KindSub, f.Subject), revocation.ReasonSubject, false},
		{denyKey(revocation.KindClient, f.ClientID), revocation.ReasonClient, false},
		{denyKey(revocation.KindAll, ""), revocation.ReasonAll, false},
	}
}

func (r denyRule) ends(f *family, before int64) bool {
	return r.anyTime || f.CreatedAt.Unix() <= before
}

// covers reports whether a deny record in this replica's copy of the
// bucket ends family f.
func (d *denyList) covers(f *family) (bool, string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, r := range rules(f) {
		if b, ok := d.m[r.key]; ok && r.ends(f, b) {
			return true, r.reason
		}
	}
	return false, ""
}

// coversStored is covers against the bucket itself. This replica's copy
// follows a watch that can be behind (by milliseconds, or seconds while
// NATS fails over), and a refresh here that has not seen a new sub, client
// or all record would mint one more access token, issued after the
// event's issued_before and so not refused by any sidecar. The record is
// stored before the admin API answers, so the bucket is the truth. The
// four reads run at once; any failure to read is an error: a refresh
// fails closed.
func (d *denyList) coversStored(ctx context.Context, f *family) (bool, string, error) {
	rs := rules(f)
	var (
		wg     sync.WaitGroup
		before [len(rs)]int64
		found  [len(rs)]bool
		errs   [len(rs)]error
	)
	for i, r := range rs {
		wg.Go(func() {
			var v []byte
			var ok bool
			err := retryFailover(ctx, func(ctx context.Context) (err error) {
				v, ok, err = d.readLeader(ctx, r.key)
				return err
			})
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("read deny record: %w", err)
			case ok:
				b, perr := strconv.ParseInt(string(v), 10, 64)
				if perr != nil {
					errs[i] = fmt.Errorf("deny record %s: %w", r.key, perr)
					return
				}
				before[i], found[i] = b, true
			}
		})
	}
	wg.Wait()
	for i, r := range rs {
		if found[i] {
			d.remember(r.key, before[i])
			if r.ends(f, before[i]) {
				return true, r.reason, nil
			}
		}
	}
	return false, "", errors.Join(errs[:]...)
}

// readLeader reads key's value from the bucket's stream leader. Not with
// KeyValue.Get: that is a direct get, which any replica of the stream may
// answer, a follower included that has not yet applied the newest write,
// the very lag coversStored is there to close. The JetStream API's
// MSG.GET is answered by the leader only, which acknowledged the admin
// API's write. ok is false when the key holds no value (never written,
// expired, deleted or purged).
func (d *denyList) readLeader(ctx context.Context, key string) (value []byte, ok bool, err error) {
	bucket := d.kv.Bucket()
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{"$KV." + bucket + "." + key})
	if err != nil {
		return nil, false, err
	}
	m, err := d.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return nil, false, err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Header []byte `json:"hdrs"`
			Data   []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, false, fmt.Errorf("decode the answer to a read of %s: %w", key, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, false, nil
	case resp.Error != nil:
		return nil, false, resp.Error
	case resp.Message == nil:
		return nil, false, fmt.Errorf("read of %s: an answer without a message", key)
	}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return nil, false, fmt.Errorf("read of %s: headers: %w", key, err)
		}
		if op := h.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			return nil, false, nil
		}
	}
	return resp.Message.Data, true, nil
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
