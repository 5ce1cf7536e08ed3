package directory

import (
	"errors"
	"slices"
	"time"
)

// Grant types a client may be allowed, as named in RFC 6749 and in the
// grants list of clients.yaml.
const (
	GrantPassword          = "password"
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// ErrInvalidCredentials is the only error AuthenticateUser and
// AuthenticateClient return, whatever was wrong (unknown name, wrong
// password, disabled account), so neither the error nor the response built
// from it tells an attacker which part of a guess was right.
var ErrInvalidCredentials = errors.New("invalid credentials")

// User is a person who may log in with the password grant. Values returned by
// a Directory are shared by all its readers and must not be modified.
type User struct {
	Username     string
	PasswordHash string // argon2id PHC string, verified at load time to be well-formed
	Disabled     bool   // a disabled user keeps its entry (and its sessions' sub) but cannot log in
	// Scopes, if non-empty, are the only scopes this user may receive; the
	// issuer intersects them with the client's. Empty means no user-level
	// restriction.
	Scopes []string
}

// Client is an OAuth2 client application. Values returned by a Directory are
// shared by all its readers and must not be modified.
type Client struct {
	ID         string
	SecretHash string   // argon2id PHC string, verified at load time to be well-formed
	Grants     []string // the grant types it may use; a subset of the Grant* constants
	Scopes     []string // the scopes it may request
	// Audience is the "aud" of its access tokens; empty lets the issuer
	// choose its default.
	Audience        []string
	AccessTokenTTL  time.Duration // 0 means the issuer's default
	RefreshTokenTTL time.Duration // 0 means the issuer's default
	Disabled        bool          // a disabled client is refused every grant
}

// AllowsGrant reports whether the client may use grant type g, which the
// token endpoint must check before honouring a request (RFC 6749
// unauthorized_client).
func (c *Client) AllowsGrant(g string) bool {
	return slices.Contains(c.Grants, g)
}

// Directory is an immutable snapshot of the users and clients, safe for
// concurrent use. A new snapshot replaces it on reload, so a request sees one
// consistent view throughout. Make one with Load or Parse; the zero value is
// not usable.
type Directory struct {
	users   map[string]*userRecord
	clients map[string]*clientRecord
	shared  *shared
}

type userRecord struct {
	user User
	hash phcHash
}

type clientRecord struct {
	client Client
	hash   phcHash
}

// User returns the user named name, so the issuer can re-check on refresh
// that a session's user still exists and is enabled. The result must not be
// modified.
func (d *Directory) User(name string) (*User, bool) {
	r, ok := d.users[name]
	if !ok {
		return nil, false
	}
	return &r.user, true
}

// Client returns the client with the given id, for checks that need no
// secret (e.g. a refresh token's client still existing). The result must not
// be modified.
func (d *Directory) Client(id string) (*Client, bool) {
	r, ok := d.clients[id]
	if !ok {
		return nil, false
	}
	return &r.client, true
}

// Users returns the number of users, for logs and metrics.
func (d *Directory) Users() int { return len(d.users) }

// Clients returns the number of clients, for logs and metrics.
func (d *Directory) Clients() int { return len(d.clients) }

// AuthenticateUser checks a username and password for the password grant.
// Unknown and disabled users cost the same argon2id verification as a known
// one (an unknown name is checked against a dummy hash made with
// DefaultParams), and every failure is ErrInvalidCredentials, so neither
// timing nor error tells which part was wrong. Passwords are never cached:
// each login pays the full argon2id cost, which is what makes guessing slow.
func (d *Directory) AuthenticateUser(username, password string) (*User, error) {
	r, ok := d.users[username]
	if !ok {
		d.shared.verify(d.shared.dummyHash(), password)
		return nil, ErrInvalidCredentials
	}
	if !d.shared.verify(r.hash, password) || r.user.Disabled {
		return nil, ErrInvalidCredentials
	}
	return &r.user, nil
}

// AuthenticateClient checks a client id and secret. Like AuthenticateUser it
// does the same argon2id work for unknown and disabled clients and returns
// only ErrInvalidCredentials on failure. Unlike user logins, a successful
// verification is cached for up to five minutes (bounded to 10,000 entries),
// keyed by an HMAC of the id, the secret and the stored hash, because
// argon2id on every client_credentials request would cap the issuer at a few
// dozen requests a second. Failures are never cached, and a changed secret
// hash misses the cache.
func (d *Directory) AuthenticateClient(id, secret string) (*Client, error) {
	r, ok := d.clients[id]
	if !ok {
		d.shared.verify(d.shared.dummyHash(), secret)
		return nil, ErrInvalidCredentials
	}
	if r.client.Disabled {
		// Checked before the cache: a client disabled by a reload must stop
		// at once, even though its hash (and so its cache key) is unchanged.
		d.shared.verify(r.hash, secret)
		return nil, ErrInvalidCredentials
	}
	k := d.shared.cacheKey(id, secret, r.client.SecretHash)
	if d.shared.cache.hit(k) {
		return &r.client, nil
	}
	if !d.shared.verify(r.hash, secret) {
		return nil, ErrInvalidCredentials
	}
	d.shared.cache.add(k)
	return &r.client, nil
}
