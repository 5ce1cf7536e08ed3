// Package revocation is the revocation engine shared by the issuer, which
// publishes revocation events, and the sidecar, which applies them to an
// in-memory set consulted on every verification.
//
// An [Event] revokes one access token (jti), one session (sid), or every
// token of a subject, a client or the whole deployment issued at or before a
// point in time (sub, client, all). Events travel as JWS signed by the
// issuer's Ed25519 distribution key with typ [EventType] ([Sign], [Verify]),
// so no other JWS made with that key — a JWKS bundle, say — can pass for an
// event.
//
// The issuer publishes events on the JetStream stream named by
// [StreamName] ([EnsureStream], [Publisher]); each message carries the event
// id as its Nats-Msg-Id, so a retried publish is stored once, and a
// per-message TTL that keeps it until the event's expires_at, after which no
// token it matches can still be valid.
//
// A sidecar runs a [Consumer], which replays the stream into a [Set] and then
// follows it live, verifying every message and dropping (and reporting)
// anything not signed by a trusted key. It reads the stream with direct gets
// and holds no JetStream consumer. [Set.Check] is the hot path of token
// verification: a few lock-free lookups in one go-memdb read transaction.
//
// This package depends on jwks for the signed-envelope format and on nothing
// of the issuer or the sidecar.
package revocation
