package revocation

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
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
	ReasonKey     = "signing key revoked"
)

// The memdb schema: one table of buckets. An entry is one revoked (kind,
// value) with its live events, the highest issued_before among them (what
// Check needs for sub, client and all) and the earliest expires_at. Entries
// are grouped into buckets by kind and a keyed hash of the value: a bucket
// is a memdb row, its entries a slice sorted by value, and the "expires"
// index orders buckets by their earliest expires_at, for GC.
//
// Why buckets rather than a row per value: go-memdb keeps each row in one
// radix tree per index, and every tree node carries its own watch channel,
// so a row per value cost some 900 bytes and two radix inserts per event.
// With up to bucketCount buckets per kind the trees stay small and fixed,
// an event costs its own bytes plus one slot in a slice, and Check is still
// one exact lookup per kind (in a tree of at most bucketCount keys) and a
// binary search in a bucket of about n/bucketCount entries. The hash is
// keyed per Set, so no one can choose values that pile into one bucket.
const (
	table        = "revocations"
	indexID      = "id"
	indexExpires = "expires"
	// bucketBits sets the number of buckets per kind. 1024 holds a
	// 100,000-event set's memdb overhead to some 60 bytes an event while a
	// bucket stays at a few dozen entries, cheap to copy on write (a
	// million events would make that a few microseconds an insert).
	bucketBits  = 10
	bucketCount = 1 << bucketBits
)

// entry is one (kind, value) of the set.
type entry struct {
	value      string
	maxBefore  int64    // max IssuedBefore of events (sub, client, all)
	minExpires int64    // min ExpiresAt of events
	events     []*Event // never empty; all of the same kind and value
}

// bucket is a memdb row: the entries of one kind whose values hash to one
// bucket, sorted by value. Buckets are immutable once committed: readers
// hold them without locks, so writers replace them (a bucket made in the
// running write transaction, not yet visible, is changed in place).
type bucket struct {
	key        [4]byte // kindCode, then the bucket number, 4 bits a byte
	minExpires int64   // min over entries
	entries    []entry
}

// find returns the index of value's entry, or where it would go.
func (b *bucket) find(value string) (int, bool) {
	return slices.BinarySearchFunc(b.entries, value, func(e entry, v string) int { return strings.Compare(e.value, v) })
}

// kindCode is the one-byte prefix of a bucket key.
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
	case KindKID:
		return 'k'
	}
	return 0
}

// kindSlot numbers the kinds 0 to numKinds-1.
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
	case KindKID:
		return 5
	}
	return 4
}

// numKinds is the number of kinds (and of kindSlot's slots).
const numKinds = 6

// keyIndexer indexes buckets by key. FromArgs takes a *lookup, a reusable
// argument: from a pool, a lookup allocates nothing but what go-memdb
// itself does.
type keyIndexer struct{}

// lookup is the hot path's reusable key, with the argument slice for
// Txn.First already made (a variadic call with a fresh argument would
// allocate one every time).
type lookup struct {
	key  [4]byte
	args [1]any
}

var lookups = sync.Pool{New: func() any {
	l := &lookup{}
	l.args[0] = l
	return l
}}

func (keyIndexer) FromObject(obj any) (bool, []byte, error) {
	b, ok := obj.(*bucket)
	if !ok {
		return false, nil, fmt.Errorf("revocation set: unexpected object %T", obj)
	}
	return true, b.key[:], nil
}

func (keyIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("revocation set: one key argument expected")
	}
	l, ok := args[0].(*lookup)
	if !ok {
		return nil, fmt.Errorf("revocation set: unexpected key %T", args[0])
	}
	return l.key[:], nil
}

// expiresIndexer indexes buckets by their earliest expires_at, big-endian
// so that byte order is time order (expires_at is never negative).
type expiresIndexer struct{}

func (expiresIndexer) FromObject(obj any) (bool, []byte, error) {
	b, ok := obj.(*bucket)
	if !ok {
		return false, nil, fmt.Errorf("revocation set: unexpected object %T", obj)
	}
	return true, binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(max(b.minExpires, 0))), nil // #nosec G115 -- clamped to ≥ 0
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
	db   *memdb.MemDB
	now  func() time.Time
	seed maphash.Seed
	n    atomic.Int64 // live events, updated by writers before commit
	// entries counts entries by kind (kindSlot), so Check skips kinds with
	// none.
	entries [numKinds]atomic.Int64
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
	s := &Set{db: db, now: time.Now, seed: maphash.MakeSeed()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// key sets l to the key of the bucket that holds (k, value).
func (s *Set) key(l *lookup, k Kind, value string) []any {
	h := maphash.String(s.seed, value) & (bucketCount - 1)
	// Four bits a byte: radix nodes of at most 16 edges, cheap to copy
	// when a write changes the path to a bucket.
	l.key = [4]byte{kindCode(k), byte(h >> 8 & 15), byte(h >> 4 & 15), byte(h & 15)}
	return l.args[:]
}

// writeTxn is a write transaction with the buckets it has made, which it
// may still change in place.
type writeTxn struct {
	*memdb.Txn
	fresh map[[4]byte]*bucket
}

func (s *Set) write() *writeTxn {
	return &writeTxn{Txn: s.db.Txn(true), fresh: map[[4]byte]*bucket{}}
}

// Apply adds e to the set. It returns false, changing nothing, when the set
// already holds an event with e's ID (Apply is idempotent, so a replay is
// harmless), when e has already expired, or when e is not valid. The set
// keeps its own copy of e.
func (s *Set) Apply(e *Event) bool {
	txn := s.write()
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
	txn := s.write()
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

func (s *Set) insert(txn *writeTxn, e *Event, now int64) bool {
	if e.ExpiresAt <= now || e.Validate() != nil {
		return false
	}
	l := lookups.Get().(*lookup)
	raw, err := txn.First(table, indexID, s.key(l, e.Kind, e.Value)...)
	key := l.key
	lookups.Put(l)
	if err != nil {
		return false
	}
	old, _ := raw.(*bucket)
	var have *entry
	i, found := 0, false
	if old != nil {
		i, found = old.find(e.Value)
		if found {
			have = &old.entries[i]
		}
	}
	ev := *e
	var ne entry
	switch {
	case have == nil:
		ne = entry{value: ev.Value, maxBefore: ev.IssuedBefore, minExpires: ev.ExpiresAt, events: []*Event{&ev}}
	case e.Kind == KindJTI || e.Kind == KindSID || e.Kind == KindKID:
		// A token or session is revoked or not: one event per entry is
		// enough, the one that lasts longest. Keeping every repeat would
		// let a client that revokes the same session over and over make
		// each insert (and every sidecar) slower.
		if h := have.events[0]; h.ID == e.ID || h.ExpiresAt >= e.ExpiresAt {
			return false
		}
		ne = entry{value: ev.Value, minExpires: ev.ExpiresAt, events: []*Event{&ev}}
	default:
		for _, h := range have.events {
			if h.ID == e.ID {
				return false
			}
		}
		ne = entry{
			value:      have.value,
			maxBefore:  max(have.maxBefore, ev.IssuedBefore),
			minExpires: min(have.minExpires, ev.ExpiresAt),
			events:     append(slices.Clip(have.events), &ev),
		}
	}

	// The bucket to write: a copy of the committed one, or the one this
	// transaction made, which is changed in place. go-memdb computes the
	// index keys to remove from the object it holds, so a bucket in
	// place whose earliest expiry changes is deleted first, under its old
	// key.
	b, inPlace := txn.fresh[key], true
	if b == nil {
		b, inPlace = &bucket{key: key}, false
		if old != nil {
			b.entries = slices.Clone(old.entries)
		}
		txn.fresh[key] = b
	}
	minExpires := ne.minExpires
	for j := range b.entries {
		if !found || j != i {
			minExpires = min(minExpires, b.entries[j].minExpires)
		}
	}
	reinsert := !inPlace || minExpires != b.minExpires
	if inPlace && reinsert {
		if err := txn.Delete(table, b); err != nil {
			return false
		}
	}
	if found {
		b.entries[i] = ne
	} else {
		b.entries = slices.Insert(b.entries, i, ne)
		s.entries[kindSlot(ev.Kind)].Add(1) // before the entry is visible
	}
	b.minExpires = minExpires
	if reinsert {
		if err := txn.Insert(table, b); err != nil {
			return false
		}
	}
	if have == nil || e.Kind != KindJTI && e.Kind != KindSID && e.Kind != KindKID {
		s.n.Add(1)
	}
	if ev.Kind == KindAll && ev.IssuedBefore > s.all.Load() {
		s.all.Store(ev.IssuedBefore)
	}
	return true
}

// Check reports whether a token with claims c is revoked, and if so a
// short kind-based reason. It is revoked when the set holds an event for
// the key that signed it (kid), its jti, its sid (when it has one), or a
// sub, client or all event with c.IssuedAt <= issued_before. Check takes
// no lock: it makes up to five exact lookups in one immutable snapshot of the set (go-memdb's
// read transactions are lock-free) and reads the "all" bound from an
// atomic.
func (s *Set) Check(c *jwks.Claims) (revoked bool, reason string) {
	if c == nil {
		return false, ""
	}
	// A kind with no entries needs no lookup: with no jti, sid, sub or
	// client revocation held (the common case), Check allocates nothing at
	// all. entries is raised before an entry becomes visible and lowered
	// only after it is gone, so it is never too low.
	var txn *memdb.Txn
	l := lookups.Get().(*lookup)
	defer lookups.Put(l)
	get := func(k Kind, value string) *entry {
		if value == "" || s.entries[kindSlot(k)].Load() == 0 {
			return nil
		}
		if txn == nil {
			txn = s.db.Txn(false)
		}
		raw, err := txn.First(table, indexID, s.key(l, k, value)...)
		if err != nil {
			return nil
		}
		b, _ := raw.(*bucket)
		if b == nil {
			return nil
		}
		i, found := b.find(value)
		if !found {
			return nil
		}
		return &b.entries[i]
	}
	if get(KindKID, c.KeyID) != nil {
		return true, ReasonKey
	}
	if get(KindJTI, c.ID) != nil {
		return true, ReasonToken
	}
	if get(KindSID, c.SessionID) != nil {
		return true, ReasonSession
	}
	if e := get(KindSub, c.Subject); e != nil && c.IssuedAt <= e.maxBefore {
		return true, ReasonSubject
	}
	if e := get(KindClient, c.ClientID); e != nil && c.IssuedAt <= e.maxBefore {
		return true, ReasonClient
	}
	if b := s.all.Load(); b > 0 && c.IssuedAt <= b {
		return true, ReasonAll
	}
	return false, ""
}

// Has reports whether the set holds an event of kind for value, whatever
// its issued_before: the exact question "is this key (or token, or
// session) revoked already?", which Check cannot answer for claims built
// to ask it (their zero iat would match any "all" event).
func (s *Set) Has(kind Kind, value string) bool {
	if value == "" || !kind.Valid() || kind == KindAll || s.entries[kindSlot(kind)].Load() == 0 {
		return false
	}
	l := lookups.Get().(*lookup)
	defer lookups.Put(l)
	raw, err := s.db.Txn(false).First(table, indexID, s.key(l, kind, value)...)
	if err != nil {
		return false
	}
	b, _ := raw.(*bucket)
	if b == nil {
		return false
	}
	_, found := b.find(value)
	return found
}

// Len is the number of events in the set (expired ones count until GC
// removes them).
func (s *Set) Len() int { return int(s.n.Load()) }

// GC removes the events with expires_at <= now, walking the expires index
// only as far as now, and returns how many it removed.
func (s *Set) GC(now time.Time) int {
	cut := now.Unix()
	// Look in a read snapshot first, so that a GC with nothing to do never
	// takes the write lock.
	if !s.hasExpired(s.db.Txn(false), cut) {
		return 0
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	it, err := txn.Get(table, indexExpires)
	if err != nil {
		return 0
	}
	var due []*bucket
	for raw := it.Next(); raw != nil; raw = it.Next() {
		b := raw.(*bucket)
		if b.minExpires > cut {
			break
		}
		due = append(due, b)
	}
	removed := 0
	var gone [numKinds]int64 // entries deleted, by kind
	all := s.all.Load()
	for _, b := range due {
		slot := kindSlot(b.entries[0].events[0].Kind)
		isAll := slot == kindSlot(KindAll)
		nb := &bucket{key: b.key, entries: make([]entry, 0, len(b.entries))}
		for _, e := range b.entries {
			if e.minExpires > cut {
				nb.entries = append(nb.entries, e)
				continue
			}
			keep := make([]*Event, 0, len(e.events))
			for _, ev := range e.events {
				if ev.ExpiresAt > cut {
					keep = append(keep, ev)
				}
			}
			removed += len(e.events) - len(keep)
			if len(keep) == 0 {
				gone[slot]++
				continue
			}
			ne := entry{value: e.value, events: keep, minExpires: keep[0].ExpiresAt}
			for _, ev := range keep {
				ne.maxBefore = max(ne.maxBefore, ev.IssuedBefore)
				ne.minExpires = min(ne.minExpires, ev.ExpiresAt)
			}
			nb.entries = append(nb.entries, ne)
		}
		if isAll {
			all = 0
			for _, e := range nb.entries {
				all = max(all, e.maxBefore)
			}
		}
		if len(nb.entries) == 0 {
			if err := txn.Delete(table, b); err != nil {
				return 0 // the transaction is aborted: nothing removed
			}
			continue
		}
		nb.minExpires = nb.entries[0].minExpires
		for _, e := range nb.entries {
			nb.minExpires = min(nb.minExpires, e.minExpires)
		}
		if err := txn.Insert(table, nb); err != nil {
			return 0
		}
	}
	s.n.Add(-int64(removed))
	// Stored before the commit, while this transaction still holds the
	// write lock: an Apply(all) right after the commit must not be
	// overwritten by this older bound.
	s.all.Store(all)
	txn.Commit()
	for k, n := range gone {
		s.entries[k].Add(-n) // after the entries are gone
	}
	return removed
}

func (s *Set) hasExpired(txn *memdb.Txn, cut int64) bool {
	raw, err := txn.First(table, indexExpires)
	if err != nil || raw == nil {
		return false
	}
	return raw.(*bucket).minExpires <= cut
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
		for _, e := range raw.(*bucket).entries {
			for _, ev := range e.events {
				if ev.ExpiresAt > now {
					c := *ev
					out = append(out, &c)
				}
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
