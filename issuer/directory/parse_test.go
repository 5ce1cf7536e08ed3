package directory

import (
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadValid(t *testing.T) {
	dir := t.TempDir()
	uh, ch, ah := mustHash(t, "demo-password"), mustHash(t, "demo-secret"), mustHash(t, "admin-secret")
	users := writeFile(t, dir, "users.yaml", `# people
users:
  - username: demo
    password_hash: "`+uh+`"
    scopes: [read, write]
  - username: "jürgen@example.com"
    password_hash: '`+uh+`'
    disabled: true
`)
	clients := writeFile(t, dir, "clients.yaml", `clients:
  - id: demo-app
    secret_hash: "`+ch+`"
    grants: [password, refresh_token, client_credentials]
    scopes: [read, write]
    audience: demo-api
    access_token_ttl: 10m
    refresh_token_ttl: 24h
  - id: admin
    secret_hash: "`+ah+`"
    grants: [client_credentials]
    scopes: ["tokenwarden:admin"]
    audience: [api-a, "https://api-b.example.com"]
  - id: old
    secret_hash: "`+ah+`"
    grants: [client_credentials]
    audience: ~
    disabled: true
`)
	d, err := Load(users, clients)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if d.Users() != 2 || d.Clients() != 3 {
		t.Fatalf("Users()=%d Clients()=%d, want 2 and 3", d.Users(), d.Clients())
	}
	u, ok := d.User("demo")
	if !ok || u.Username != "demo" || u.PasswordHash != uh || u.Disabled || !slices.Equal(u.Scopes, []string{"read", "write"}) {
		t.Errorf("User(demo) = %+v, %v", u, ok)
	}
	if u, ok := d.User("jürgen@example.com"); !ok || !u.Disabled || len(u.Scopes) != 0 {
		t.Errorf("User(jürgen) = %+v, %v", u, ok)
	}
	if _, ok := d.User("nobody"); ok {
		t.Error("User(nobody) found")
	}
	c, ok := d.Client("demo-app")
	want := Client{
		ID: "demo-app", SecretHash: ch,
		Grants:   []string{GrantPassword, GrantRefreshToken, GrantClientCredentials},
		Scopes:   []string{"read", "write"},
		Audience: []string{"demo-api"}, AccessTokenTTL: 10 * time.Minute, RefreshTokenTTL: 24 * time.Hour,
	}
	if !ok || c.ID != want.ID || c.SecretHash != want.SecretHash || !slices.Equal(c.Grants, want.Grants) ||
		!slices.Equal(c.Scopes, want.Scopes) || !slices.Equal(c.Audience, want.Audience) ||
		c.AccessTokenTTL != want.AccessTokenTTL || c.RefreshTokenTTL != want.RefreshTokenTTL || c.Disabled {
		t.Errorf("Client(demo-app) = %+v, want %+v", c, want)
	}
	for _, g := range []string{GrantPassword, GrantRefreshToken, GrantClientCredentials} {
		if !c.AllowsGrant(g) {
			t.Errorf("demo-app does not allow %s", g)
		}
	}
	a, _ := d.Client("admin")
	if !slices.Equal(a.Audience, []string{"api-a", "https://api-b.example.com"}) || a.AccessTokenTTL != 0 || a.RefreshTokenTTL != 0 {
		t.Errorf("Client(admin) = %+v", a)
	}
	if a.AllowsGrant(GrantPassword) || a.AllowsGrant("implicit") {
		t.Error("admin allows a grant it was not given")
	}
	if o, _ := d.Client("old"); !o.Disabled || o.Audience != nil {
		t.Errorf("Client(old) = %+v", o)
	}
}

func TestLoadEmpty(t *testing.T) {
	dir := t.TempDir()
	for name, files := range map[string][2]string{
		"no paths":    {"", ""},
		"empty files": {writeFile(t, dir, "u.yaml", ""), writeFile(t, dir, "c.yaml", "")},
		"comments":    {writeFile(t, dir, "u2.yaml", "# nobody yet\n"), writeFile(t, dir, "c2.yaml", "---\n")},
		"null lists":  {writeFile(t, dir, "u3.yaml", "users:\n"), writeFile(t, dir, "c3.yaml", "clients: []\n")},
	} {
		d, err := Load(files[0], files[1])
		if err != nil {
			t.Errorf("%s: Load: %v", name, err)
			continue
		}
		if d.Users() != 0 || d.Clients() != 0 {
			t.Errorf("%s: %d users, %d clients; want none", name, d.Users(), d.Clients())
		}
		if _, err := d.AuthenticateUser("demo", "x"); !errors.Is(err, ErrInvalidCredentials) {
			t.Errorf("%s: AuthenticateUser on empty directory: %v", name, err)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(p, "")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load(missing) = %v; want fs.ErrNotExist", err)
	}
	if !strings.HasPrefix(err.Error(), p+": ") || strings.Count(err.Error(), p) != 1 {
		t.Errorf("error %q should name the path once, first", err)
	}
}

func TestParseErrors(t *testing.T) {
	h := mustHash(t, "pw")
	user := func(extra string) string {
		return "users:\n  - username: demo\n    password_hash: \"" + h + "\"\n" + extra
	}
	client := func(fields string) string {
		return "clients:\n  - id: demo-app\n    secret_hash: \"" + h + "\"\n" + fields
	}
	cc := "    grants: [client_credentials]\n"
	tests := []struct {
		name, users, clients string
		want                 string // the error starts with the file name, then must contain this
		file                 string // "users.yaml" or "clients.yaml"
		secret               string // must not appear in the error
	}{
		{name: "unknown user key", users: user("    disable: true\n"), file: "users.yaml", want: "users.yaml:4: field disable not found"},
		{name: "unknown top-level key", users: "clients: []\n", file: "users.yaml", want: "users.yaml:1: field clients not found"},
		{name: "users not a list", users: "users: demo\n", file: "users.yaml", want: "users.yaml:1: cannot unmarshal !!str into a list of users"},
		{name: "top level a list", users: "- demo\n", file: "users.yaml", want: "cannot unmarshal !!seq into a users file"},
		{name: "yaml syntax", users: "users:\n  - username: [\n", file: "users.yaml", want: "users.yaml:"},
		{name: "duplicate yaml key", users: user("    username: other\n"), file: "users.yaml", want: `mapping key "username" already defined`},
		{name: "two documents", users: user("---\nusers: []\n"), file: "users.yaml", want: "users.yaml:4: more than one YAML document"},
		{name: "duplicate username", users: user("  - username: demo\n    password_hash: \"" + h + "\"\n"), file: "users.yaml", want: `users.yaml:4: user "demo": duplicate username (first defined at line 2)`},
		{name: "empty username", users: "users:\n  - password_hash: \"" + h + "\"\n", file: "users.yaml", want: "users.yaml:2: user #1: username is empty"},
		{name: "null entry skipped, lines kept", users: "users:\n  -\n  - username: \"de mo\"\n", file: "users.yaml", want: `users.yaml:3: user "de mo"`},
		{name: "username with space", users: "users:\n  - username: \"de mo\"\n    password_hash: \"" + h + "\"\n", file: "users.yaml", want: `user "de mo": username contains whitespace`},
		{name: "username with control char", users: "users:\n  - username: \"de\\u0001mo\"\n    password_hash: \"" + h + "\"\n", file: "users.yaml", want: "username contains whitespace or a control character"},
		{name: "invalid utf8", users: "users:\n  - username: de\xffmo\n", file: "users.yaml", want: "users.yaml: invalid leading UTF-8 octet"},
		{name: "missing password hash", users: "users:\n  - username: demo\n", file: "users.yaml", want: `user "demo": password_hash is required`},
		{name: "plaintext password", users: "users:\n  - username: demo\n    password_hash: hunter2\n", file: "users.yaml", want: `user "demo": password_hash: malformed argon2id hash`, secret: "hunter2"},
		{name: "absurd memory", users: "users:\n  - username: demo\n    password_hash: \"" + strings.Replace(h, "m=64", "m=2000000", 1) + "\"\n", file: "users.yaml", want: "exceed the limits"},
		{name: "value in wrong field redacted", users: user("    disabled: hunter2\n"), file: "users.yaml", want: "users.yaml:4: cannot unmarshal !!str into bool", secret: "hunter2"},
		{name: "bad user scope", users: user("    scopes: [\"a\\\"b\"]\n"), file: "users.yaml", want: `user "demo": scope "a\"b" is not an RFC 6749 scope-token`},
		{name: "user scope non-ascii", users: user("    scopes: [lesen/schreiben, \"größe\"]\n"), file: "users.yaml", want: "is not an RFC 6749 scope-token"},
		{name: "empty scope", users: user("    scopes: [\"\"]\n"), file: "users.yaml", want: "empty scope"},
		{name: "duplicate scope", users: user("    scopes: [read, read]\n"), file: "users.yaml", want: `duplicate scope "read"`},

		{name: "unknown grant", clients: client("    grants: [implicit]\n"), file: "clients.yaml", want: `clients.yaml:2: client "demo-app": unknown grant "implicit"`},
		{name: "no grants", clients: client(""), file: "clients.yaml", want: `client "demo-app": no grants`},
		{name: "duplicate grant", clients: client("    grants: [password, password]\n"), file: "clients.yaml", want: `duplicate grant "password"`},
		{name: "refresh without password", clients: client("    grants: [refresh_token, client_credentials]\n"), file: "clients.yaml", want: `grant "refresh_token" requires grant "password"`},
		{name: "bad client scope", clients: client(cc + "    scopes: [\"a\\\\b\"]\n"), file: "clients.yaml", want: "is not an RFC 6749 scope-token"},
		{name: "scope with space", clients: client(cc + "    scopes: [\"read write\"]\n"), file: "clients.yaml", want: `scope "read write" is not an RFC 6749 scope-token`},
		{name: "negative access ttl", clients: client(cc + "    access_token_ttl: -1m\n"), file: "clients.yaml", want: "access_token_ttl must not be negative"},
		{name: "negative refresh ttl", clients: client("    grants: [password, refresh_token]\n    refresh_token_ttl: -24h\n"), file: "clients.yaml", want: "refresh_token_ttl must not be negative"},
		{name: "ttl without unit", clients: client(cc + "    access_token_ttl: 600\n"), file: "clients.yaml", want: `access_token_ttl: time: missing unit in duration "600"`},
		{name: "bad ttl", clients: client(cc + "    access_token_ttl: 10x\n"), file: "clients.yaml", want: "access_token_ttl: time: unknown unit"},
		{name: "audience mapping", clients: client(cc + "    audience: {a: b}\n"), file: "clients.yaml", want: "audience must be a string or a list of strings"},
		{name: "audience nested list", clients: client(cc + "    audience: [[a]]\n"), file: "clients.yaml", want: "audience must be a string or a list of strings"},
		{name: "audience empty", clients: client(cc + "    audience: \"\"\n"), file: "clients.yaml", want: `audience "" is empty`},
		{name: "audience duplicate", clients: client(cc + "    audience: [a, a]\n"), file: "clients.yaml", want: `duplicate audience "a"`},
		{name: "empty client id", clients: "clients:\n  - secret_hash: \"" + h + "\"\n" + cc, file: "clients.yaml", want: "client #1: id is empty"},
		{name: "client id with tab", clients: "clients:\n  - id: \"demo\\tapp\"\n    secret_hash: \"" + h + "\"\n" + cc, file: "clients.yaml", want: "id contains whitespace"},
		{name: "duplicate client id", clients: client(cc) + "  - id: demo-app\n    secret_hash: \"" + h + "\"\n" + cc, file: "clients.yaml", want: `clients.yaml:5: client "demo-app": duplicate client id (first defined at line 2)`},
		{name: "missing secret hash", clients: "clients:\n  - id: demo-app\n" + cc, file: "clients.yaml", want: "secret_hash is required"},
		{name: "malformed secret hash", clients: "clients:\n  - id: demo-app\n    secret_hash: s3cr3t-value\n" + cc, file: "clients.yaml", want: "secret_hash: malformed argon2id hash", secret: "s3cr3t-value"},
		{name: "unknown client key", clients: client(cc + "    redirect_uris: [x]\n"), file: "clients.yaml", want: "clients.yaml:5: field redirect_uris not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Through real files, as the issuer reads them.
			dir := t.TempDir()
			up := writeFile(t, dir, "users.yaml", tt.users)
			cp := writeFile(t, dir, "clients.yaml", tt.clients)
			_, err := Load(up, cp)
			if err == nil {
				t.Fatal("Load succeeded; want an error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, filepath.Join(dir, tt.file)) {
				t.Errorf("error %q does not start with the file path", msg)
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not contain %q", msg, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q spans several lines", msg)
			}
			if tt.secret != "" && strings.Contains(msg, tt.secret) {
				t.Errorf("error %q leaks %q", msg, tt.secret)
			}
			// And through Parse, which names the files generically.
			_, err = Parse([]byte(tt.users), []byte(tt.clients))
			if err == nil || !strings.HasPrefix(err.Error(), tt.file) {
				t.Errorf("Parse error %v does not start with %q", err, tt.file)
			}
		})
	}
}

func TestParseErrorNeverContainsHash(t *testing.T) {
	// A hash that parses but is refused for its parameters: the error must
	// describe, not quote.
	h := strings.Replace(mustHash(t, "pw"), "t=1", "t=99", 1)
	_, err := Parse([]byte("users:\n  - username: demo\n    password_hash: \""+h+"\"\n"), nil)
	if err == nil {
		t.Fatal("Parse accepted t=99")
	}
	if strings.Contains(err.Error(), h) || strings.Contains(err.Error(), h[len(h)-20:]) {
		t.Errorf("error %q contains the hash", err)
	}
}

func TestRedactYAMLValue(t *testing.T) {
	for in, want := range map[string]string{
		"line 3: cannot unmarshal !!str `hunter2` into bool":        "line 3: cannot unmarshal !!str into bool",
		"line 3: cannot unmarshal !!str `a into b` into bool":       "line 3: cannot unmarshal !!str into bool",
		"line 3: cannot unmarshal !!seq into string":                "line 3: cannot unmarshal !!seq into string",
		"line 3: cannot unmarshal !!str `sec`ret`` into []string":   "line 3: cannot unmarshal !!str into []string",
		"line 1: field x not found in type directory.userEntry":     "line 1: field x not found in type directory.userEntry",
		"line 1: cannot unmarshal weird without the expected shape": "line 1: cannot unmarshal (value redacted)",
	} {
		if got := redactYAMLValue(in); got != want {
			t.Errorf("redactYAMLValue(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestExamples keeps examples/users.yaml and examples/clients.yaml valid and
// their documented example credentials working.
func TestExamples(t *testing.T) {
	d, err := Load(filepath.Join("..", "..", "examples", "users.yaml"), filepath.Join("..", "..", "examples", "clients.yaml"))
	if err != nil {
		t.Fatalf("examples do not load: %v", err)
	}
	for user, pw := range map[string]string{"demo": "demo-password", "alice": "alice-password"} {
		if _, err := d.AuthenticateUser(user, pw); err != nil {
			t.Errorf("example user %s: %v", user, err)
		}
	}
	for id, secret := range map[string]string{"demo-app": "demo-secret", "admin": "admin-secret", "reporting": "reporting-secret"} {
		if _, err := d.AuthenticateClient(id, secret); err != nil {
			t.Errorf("example client %s: %v", id, err)
		}
	}
	if c, _ := d.Client("demo-app"); !slices.Equal(c.Audience, []string{"demo-api"}) || c.AccessTokenTTL != 10*time.Minute {
		t.Errorf("demo-app = %+v", c)
	}
}
