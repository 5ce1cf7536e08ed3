package natsconn

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/nats-io/nats.go"
)

// PrivateInbox returns a new inbox subject of nc nobody can guess: the
// connection's inbox prefix and 128 random bits. nats.go's own inboxes
// and request replies are predictable from the ones seen before, and
// clients that share an account and a credential (every sidecar) see each
// other's: anyone of them can then have JetStream answer a request of its
// own onto another's inbox. An answer on a private inbox that is used for
// one request and then dropped came from that request, up to its first
// message: whoever watches the account's inboxes learns the subject only
// from that.
func PrivateInbox(nc *nats.Conn) string {
	prefix := nats.InboxPrefix // "_INBOX."
	if p := nc.Opts.InboxPrefix; p != "" {
		prefix = p + "."
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return prefix + hex.EncodeToString(b[:])
}
