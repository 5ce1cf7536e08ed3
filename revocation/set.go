package revocation

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/tokenwarden/tokenwarden/jwks"
)

// The reasons Check gives. They name the kind of revocation only: the
// administrator's free-text Reason may say more than a token holder should
// learn, so it stays in the event (Set.Events) for audit.
const (
	ReasonToken   = "token revoked"
	ReasonSession = "session revoked"
	ReasonSubject = "subject revoked"
	ReasonClient  = "client revoked"
	ReasonAll     = "all tokens revoked"
)

// The memdb schema: one table with a row per revoked (kind, value). A row
// carries the live events for its value, the highest issued_before among
// them (what Check needs for sub, client and all) and the earliest
// expires_at among them, which the "expires" index orders for GC.
//
// One row per value rather than one per event (with indexes on id,
// (kind, value) and expires_at, and a second table of maxima) keeps Check
// to a single exact lookup per kind in a unique index, and the number of
// radix trees an event lives in — the bulk of go-memdb's memory, each tree
// node carrying its own watch channel — to two. Duplicate ids are found
// among the row's events: an event id names one (kind, value), as the
// issuer signed it.
const (
	table        = "revocations"
	indexID      = "id"
	indexExpires = "expires"
)

// row is one (kind, value) of the set. Rows are immutable once inserted:
// readers hold them without locks, so writers replace them.
type row struct {
	maxBefore  int64    // max IssuedBefore of events (sub, client, all)
	minExpires int64    // min ExpiresAt of events
	events     []*Event // never empty; all of the same kind and value
}

// key is the row's primary key: kindCode(kind) + value. It is not stored
// in the row: go-memdb keeps its own copy in the index.
func (r *row) key() []byte {
	e := r.events[0]
	return append(append(make([]byte, 0, 1+len(e.Value)), kindCode(e.Kind)), e.Value...)
}

// kindCode is the one-byte prefix of a row key.
func kindCode(k Kind) byte {
	switch k {
	case KindJTI:
		return 'j'
	case KindSID:
		return 's'
	case KindSub:
		return 'u'
	case KindClient:
		return 'c'
	case KindAll:
		return 'a'
	}
	return 0
}

// kindSlot numbers the kinds 0 to 4.
func kindSlot(k Kind) int {
	switch k {
	case KindJTI:
		return 0
	case KindSID:
		return 1
	case KindSub:
		return 2
	case KindClient:
		return 3
	}
	return 4
}

// keyIndexer indexes rows by key. FromArgs takes a *lookup, a reusable
// key buffer: from a pool, a lookup allocates nothing but what go-memdb
// itself does.
type keyIndexer struct{}

// lookup is the hot path's reusable key buffer, with the argument slice
// for Txn.First already made (a variadic call with a fresh argument would
// allocate one every time).
type lookup struct {
	buf  []byte
	args [1]any
}

var lookups = sync.Pool{New: func() any {
	l := &lookup{buf: make([]byte, 0, 128)}
	l.args[0] = l
	return l
}}

func (l *lookup) key(k Kind, value string) []any {
	l.buf = append(append(l.buf[:0], kindCode(k)), value...)
	return l.args[:]
}

func (keyIndexer) FromObject(obj any) (bool, []byte, error) {
	r, ok := obj.(*row)
	if !ok {
		return false, nil, fmt.Errorf("revocation set: unexpected object %T", obj)
	}
	return true, r.key(), nil
}

func (keyIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("revocation set: one key argument expected")
	}
	l, ok := args[0].(*lookup)
	if !ok {
		return nil, fmt.Errorf("revocation set: unexpected key %T", args[0])
	}
	return l.buf, nil
}

// expiresIndexer indexes rows by their earliest expires_at, big-endian so
// that byte order is time order (expires_at is never negative).
type expiresIndexer struct{}

func (expiresIndexer) FromObject(obj any) (bool, []byte, error) {
	r, ok := obj.(*row)
	if !ok {
		return false, nil, fmt.Errorf("revocation set: unexpected object %T", obj)
	}
	return true, binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(max(r.minExpires, 0))), nil // #nosec G115 -- clamped to ≥ 0
}

func (expiresIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("revocation set: one time argument expected")
	}
	t, ok := args[0].(int64)
	if !ok {
		return nil, fmt.Errorf("revocation set: unexpected time %T", args[0])
	}
	return binary.BigEndian.AppendUint64(nil, uint64(max(t, 0))), nil // #nosec G115 -- clamped to ≥ 0
}

var schema = &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
	table: {
		Name: table,
		Indexes: map[string]*memdb.IndexSchema{
			indexID:      {Name: indexID, Unique: true, Indexer: keyIndexer{}},
			indexExpires: {Name: indexExpires, Indexer: expiresIndexer{}},
		},
	},
}}

// Set is the in-memory revocation set: the live events a sidecar has
// applied, in a go-memdb database. Check reads it through lock-free
// snapshot transactions; writes (Apply, GC) are serialised by go-memdb.
// A Set is safe for concurrent use.
type Set struct {
	db  *memdb.MemDB
	now func() time.Time
	n   atomic.Int64 // live events, updated by writers before commit
	// rows counts rows by kind (kindSlot), so Check skips kinds with none.
	rows [5]atomic.Int64
	// all is the highest issued_before of the "all" events (0: none), the
	// one bound every Check needs: an atomic saves a lookup on the hot
	// path. Writers (serialised by go-memdb) raise it before committing an
	// "all" event and lower it only after GC has committed.
	all atomic.Int64
}

// SetOption configures a Set.
type SetOption func(*Set)

// WithSetClock sets the clock Apply and Events use to tell expired events
// (default time.Now).
func WithSetClock(now func() time.Time) SetOption { return func(s *Set) { s.now = now } }

// NewSet returns an empty set.
func NewSet(opts ...SetOption) *Set {
	db, err := memdb.NewMemDB(schema)
	if err != nil {
		panic("revocation: bad memdb schema: " + err.Error()) // a programming error, caught by any test
	}
	s := &Set{db: db, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Apply adds e to the set. It returns false, changing nothing, when the set
// already holds an event with e's ID (Apply is idempotent, so a replay is
// harmless), when e has already expired, or when e is not valid. The set
// keeps its own copy of e.
func (s *Set) Apply(e *Event) bool {
	txn := s.db.Txn(true)
	defer txn.Abort()
	ok := s.insert(txn, e, s.now().Unix())
	if ok {
		txn.Commit()
	}
	return ok
}

// applyAll applies events in one write transaction (replaying a stream
// one transaction per event would copy the radix trees' paths every time)
// and reports which were new.
func (s *Set) applyAll(events []*Event, applied []bool) {
	now := s.now().Unix()
	txn := s.db.Txn(true)
	defer txn.Abort()
	changed := false
	for i, e := range events {
		applied[i] = e != nil && s.insert(txn, e, now)
		changed = changed || applied[i]
	}
	if changed {
		txn.Commit()
	}
}

func (s *Set) insert(txn *memdb.Txn, e *Event, now int64) bool {
	if e.ExpiresAt <= now || e.Validate() != nil {
		return false
	}
	l := lookups.Get().(*lookup)
	raw, err := txn.First(table, indexID, l.key(e.Kind, e.Value)...)
	lookups.Put(l)
	if err != nil {
		return false
	}
	ev := *e
	var r *row
	old, _ := raw.(*row)
	if old != nil && (e.Kind == KindJTI || e.Kind == KindSID) {
		// A token or session is revoked or not: one event per row is
		// enough, the one that lasts longest. Keeping every repeat would
		// let a client that revokes the same session over and over make
		// each insert (and every sidecar) slower.
		if have := old.events[0]; have.ID == e.ID || have.ExpiresAt >= e.ExpiresAt {
			return false
		}
		if err := txn.Insert(table, &row{minExpires: ev.ExpiresAt, events: []*Event{&ev}}); err != nil {
			return false
		}
		return true
	}
	if old != nil {
		for _, have := range old.events {
			if have.ID == e.ID {
				return false
			}
		}
		r = &row{
			maxBefore:  max(old.maxBefore, ev.IssuedBefore),
			minExpires: min(old.minExpires, ev.ExpiresAt),
			events:     append(slices.Clip(old.events), &ev),
		}
	} else {
		r = &row{maxBefore: ev.IssuedBefore, minExpires: ev.ExpiresAt, events: []*Event{&ev}}
		s.rows[kindSlot(ev.Kind)].Add(1) // before the row is visible
	}
	if err := txn.Insert(table, r); err != nil {
		return false
	}
	s.n.Add(1)
	if ev.Kind == KindAll && ev.IssuedBefore > s.all.Load() {
		s.all.Store(ev.IssuedBefore)
	}
	return true
}

// Check reports whether a token with claims c is revoked, and if so a
// short kind-based reason. It is revoked when the set holds an event for
// its jti, for its sid (when it has one), or a sub, client or all event
// with c.IssuedAt <= issued_before. Check takes no lock: it makes up to
// four exact lookups in one immutable snapshot of the set (go-memdb's
// read transactions are lock-free) and reads the "all" bound from an
// atomic.
func (s *Set) Check(c *jwks.Claims) (revoked bool, reason string) {
	if c == nil {
		return false, ""
	}
	// A kind with no rows needs no lookup: with no jti, sid, sub or client
	// revocation held (the common case), Check allocates nothing at all.
	// rows is raised before a row becomes visible and lowered only after it
	// is gone, so it is never too low.
	var txn *memdb.Txn
	l := lookups.Get().(*lookup)
	defer lookups.Put(l)
	get := func(k Kind, value string) *row {
		if value == "" || s.rows[kindSlot(k)].Load() == 0 {
			return nil
		}
		if txn == nil {
			txn = s.db.Txn(false)
		}
		raw, err := txn.First(table, indexID, l.key(k, value)...)
		if err != nil {
			return nil
		}
		r, _ := raw.(*row)
		return r
	}
	if get(KindJTI, c.ID) != nil {
		return true, ReasonToken
	}
	if get(KindSID, c.SessionID) != nil {
		return true, ReasonSession
	}
	if r := get(KindSub, c.Subject); r != nil && c.IssuedAt <= r.maxBefore {
		return true, ReasonSubject
	}
	if r := get(KindClient, c.ClientID); r != nil && c.IssuedAt <= r.maxBefore {
		return true, ReasonClient
	}
	if b := s.all.Load(); b > 0 && c.IssuedAt <= b {
		return true, ReasonAll
	}
	return false, ""
}

// Len is the number of events in the set (expired ones count until GC
// removes them).
func (s *Set) Len() int { return int(s.n.Load()) }

// GC removes the events with expires_at <= now, walking the expires index
// only as far as now, and returns how many it removed.
func (s *Set) GC(now time.Time) int {
	cut := now.Unix()
	// Find the rows to touch in a read snapshot first, so that a GC with
	// nothing to do never takes the write lock.
	if !s.hasExpired(s.db.Txn(false), cut) {
		return 0
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	it, err := txn.Get(table, indexExpires)
	if err != nil {
		return 0
	}
	var due []*row
	for raw := it.Next(); raw != nil; raw = it.Next() {
		r := raw.(*row)
		if r.minExpires > cut {
			break
		}
		due = append(due, r)
	}
	removed := 0
	var gone [5]int64 // rows deleted, by kind
	all := s.all.Load()
	for _, r := range due {
		isAll := r.events[0].Kind == KindAll
		keep := make([]*Event, 0, len(r.events))
		for _, e := range r.events {
			if e.ExpiresAt > cut {
				keep = append(keep, e)
			}
		}
		removed += len(r.events) - len(keep)
		if len(keep) == 0 {
			if err := txn.Delete(table, r); err != nil {
				return 0 // the transaction is aborted: nothing removed
			}
			gone[kindSlot(r.events[0].Kind)]++
			if isAll {
				all = 0
			}
			continue
		}
		nr := &row{events: keep, minExpires: keep[0].ExpiresAt}
		for _, e := range keep {
			nr.maxBefore = max(nr.maxBefore, e.IssuedBefore)
			nr.minExpires = min(nr.minExpires, e.ExpiresAt)
		}
		if err := txn.Insert(table, nr); err != nil {
			return 0
		}
		if isAll {
			all = nr.maxBefore
		}
	}
	s.n.Add(-int64(removed))
	// Stored before the commit, while this transaction still holds the
	// write lock: an Apply(all) right after the commit must not be
	// overwritten by this older bound.
	s.all.Store(all)
	txn.Commit()
	for k, n := range gone {
		s.rows[k].Add(-n) // after the rows are gone
	}
	return removed
}

func (s *Set) hasExpired(txn *memdb.Txn, cut int64) bool {
	raw, err := txn.First(table, indexExpires)
	if err != nil || raw == nil {
		return false
	}
	return raw.(*row).minExpires <= cut
}

// Events returns copies of the live (unexpired) events, ordered by iat
// (then id), with their free-text reasons: the audit view.
func (s *Set) Events() []*Event {
	now := s.now().Unix()
	txn := s.db.Txn(false)
	it, err := txn.Get(table, indexID)
	if err != nil {
		return nil
	}
	var out []*Event
	for raw := it.Next(); raw != nil; raw = it.Next() {
		for _, e := range raw.(*row).events {
			if e.ExpiresAt > now {
				c := *e
				out = append(out, &c)
			}
		}
	}
	slices.SortFunc(out, func(a, b *Event) int {
		if c := cmp.Compare(a.Time().UnixMilli(), b.Time().UnixMilli()); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// RunGC calls GC every interval (default a minute) with now() (default
// time.Now) until ctx is done.
func (s *Set) RunGC(ctx context.Context, every time.Duration, now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.GC(now())
		}
	}
}
