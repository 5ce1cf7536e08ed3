package directory

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

const (
	// maxFileSize bounds what Load reads: far beyond any real directory, and
	// small enough that a wrong path (a log file, /dev/zero) fails fast.
	maxFileSize = 16 << 20
	// maxNameLen bounds usernames, client ids, scopes and audiences.
	maxNameLen = 256

	// Names used in errors by Parse, which has no file paths.
	defaultUsersName   = "users.yaml"
	defaultClientsName = "clients.yaml"
)

// Load reads and parses the users and clients files. Either path may be ""
// for none (no users, e.g. a machine-only issuer). Errors name the file and,
// where there is one, the line and entry.
func Load(usersFile, clientsFile string) (*Directory, error) {
	ub, err := readFile(usersFile)
	if err != nil {
		return nil, err
	}
	cb, err := readFile(clientsFile)
	if err != nil {
		return nil, err
	}
	return parse(ub, cb, nameOr(usersFile, defaultUsersName), nameOr(clientsFile, defaultClientsName), newShared())
}

// Parse parses the contents of a users file and a clients file (either may be
// empty), for callers that hold them in memory, such as the dev command's
// seeded credentials. Errors name "users.yaml" or "clients.yaml".
func Parse(usersYAML, clientsYAML []byte) (*Directory, error) {
	return parse(usersYAML, clientsYAML, defaultUsersName, defaultClientsName, newShared())
}

func nameOr(path, def string) string {
	if path == "" {
		return def
	}
	return path
}

// fileError is an error in one of the files. Its message is
// "FILE:LINE: detail", the form editors and humans jump to.
type fileError struct {
	file string
	line int // 0 if unknown
	err  error
}

func (e *fileError) Error() string {
	if e.line > 0 {
		return e.file + ":" + strconv.Itoa(e.line) + ": " + e.err.Error()
	}
	return e.file + ": " + e.err.Error()
}

func (e *fileError) Unwrap() error { return e.err }

// readFile reads path, or returns nil for "". Errors are fileErrors.
func readFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path) // #nosec G304 -- the operator names the users and clients files
	if err != nil {
		return nil, &fileError{file: path, err: fmt.Errorf("cannot read: %w", unwrapPathError(err))}
	}
	defer func() { _ = f.Close() }() // read-only: a close error loses nothing
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &fileError{file: path, err: fmt.Errorf("cannot read: %w", unwrapPathError(err))}
	}
	if len(b) > maxFileSize {
		return nil, &fileError{file: path, err: fmt.Errorf("larger than %d MiB", maxFileSize>>20)}
	}
	return b, nil
}

// unwrapPathError drops the *fs.PathError layer, whose message would repeat
// the path that fileError already prints.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// YAML shapes. Unknown keys are errors (KnownFields), so a misspelt
// "disable: true" cannot silently leave an account enabled.
type usersDoc struct {
	Users []userEntry `yaml:"users"`
}

type userEntry struct {
	Username     string   `yaml:"username"`
	PasswordHash string   `yaml:"password_hash"`
	Scopes       []string `yaml:"scopes"`
	Disabled     bool     `yaml:"disabled"`
}

type clientsDoc struct {
	Clients []clientEntry `yaml:"clients"`
}

type clientEntry struct {
	ID              string    `yaml:"id"`
	SecretHash      string    `yaml:"secret_hash"`
	Grants          []string  `yaml:"grants"`
	Scopes          []string  `yaml:"scopes"`
	Audience        yaml.Node `yaml:"audience"` // a string or a list of strings
	AccessTokenTTL  string    `yaml:"access_token_ttl"`
	RefreshTokenTTL string    `yaml:"refresh_token_ttl"`
	Disabled        bool      `yaml:"disabled"`
}

// parse builds a Directory from both files' contents, sharing sh (fresh for
// Load/Parse, the previous snapshot's for a Watcher reload).
func parse(usersYAML, clientsYAML []byte, usersName, clientsName string, sh *shared) (*Directory, error) {
	var ud usersDoc
	userLines, err := decodeStrict(usersYAML, usersName, "users", &ud)
	if err != nil {
		return nil, err
	}
	var cd clientsDoc
	clientLines, err := decodeStrict(clientsYAML, clientsName, "clients", &cd)
	if err != nil {
		return nil, err
	}
	d := &Directory{
		users:   make(map[string]*userRecord, len(ud.Users)),
		clients: make(map[string]*clientRecord, len(cd.Clients)),
		shared:  sh,
	}
	firstLine := make(map[string]int)
	for i, e := range ud.Users {
		line := lineAt(userLines, i)
		r, err := buildUser(e)
		if err == nil {
			if _, dup := d.users[r.user.Username]; dup {
				err = fmt.Errorf("duplicate username (first defined %s)", where(firstLine[r.user.Username]))
			}
		}
		if err != nil {
			return nil, &fileError{file: usersName, line: line, err: fmt.Errorf("user %s: %w", entryName(e.Username, i), err)}
		}
		d.users[r.user.Username] = r
		firstLine[r.user.Username] = line
	}
	clear(firstLine)
	for i, e := range cd.Clients {
		line := lineAt(clientLines, i)
		r, err := buildClient(e)
		if err == nil {
			if _, dup := d.clients[r.client.ID]; dup {
				err = fmt.Errorf("duplicate client id (first defined %s)", where(firstLine[r.client.ID]))
			} else if _, clash := d.users[r.client.ID]; clash {
				// A client_credentials token's sub is the client id: a user
				// of the same name would be indistinguishable to apps, and
				// revoked together with it.
				err = errors.New("client id is also a username (the sub of client tokens is the client id)")
			}
		}
		if err != nil {
			return nil, &fileError{file: clientsName, line: line, err: fmt.Errorf("client %s: %w", entryName(e.ID, i), err)}
		}
		d.clients[r.client.ID] = r
		firstLine[r.client.ID] = line
	}
	return d, nil
}

func where(line int) string {
	if line > 0 {
		return "at line " + strconv.Itoa(line)
	}
	return "earlier"
}

// entryName names an entry in errors: by its name if that is printable,
// else by its position.
func entryName(name string, i int) string {
	if name == "" {
		return "#" + strconv.Itoa(i+1)
	}
	return strconv.Quote(name)
}

func lineAt(lines []int, i int) int {
	if i < len(lines) {
		return lines[i]
	}
	return 0
}

// decodeStrict decodes one YAML document into out, rejecting unknown keys and
// extra documents, and returns the line of each entry of the top-level list
// under key (for error messages). Empty input is an empty directory.
func decodeStrict(data []byte, file, key string, out any) ([]int, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, yamlFileError(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &fileError{file: file, line: extra.Line, err: errors.New("more than one YAML document (remove the extra ---)")}
	}
	// Second, lenient pass for line numbers only; the strict pass above has
	// already accepted this input.
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, nil //nolint:nilerr // line numbers are best-effort; the strict pass already accepted data
	}
	m := root.Content[0]
	if m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key || m.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		// The strict pass drops null items ("- " alone), so skip them here
		// too to keep lines[i] the line of entry i.
		var lines []int
		for _, n := range m.Content[i+1].Content {
			if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
				continue
			}
			lines = append(lines, n.Line)
		}
		return lines, nil
	}
	return nil, nil
}

var (
	yamlLineRE  = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)
	yamlTypeFix = strings.NewReplacer(
		"[]directory.userEntry", "a list of users",
		"[]directory.clientEntry", "a list of clients",
		"directory.usersDoc", "a users file (a mapping with key users)",
		"directory.clientsDoc", "a clients file (a mapping with key clients)",
		"directory.userEntry", "user entry",
		"directory.clientEntry", "client entry",
	)
)

// yamlFileError turns a yaml error into a one-line fileError. The yaml
// library quotes offending scalar values ("cannot unmarshal !!str `hunter2`
// into bool"); those are cut out, since a value in the wrong place might be a
// password, so the original error is deliberately not wrapped.
func yamlFileError(file string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	line := 0
	for i, m := range msgs {
		m = redactYAMLValue(yamlTypeFix.Replace(m))
		if i == 0 {
			if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
				line, _ = strconv.Atoi(sm[1])
				m = m[len(sm[0]):]
			}
			m = strings.TrimPrefix(m, "yaml: ")
		}
		msgs[i] = m
	}
	return &fileError{file: file, line: line, err: errors.New(strings.Join(msgs, "; "))}
}

// redactYAMLValue rewrites "cannot unmarshal TAG `value` into TYPE" to
// "cannot unmarshal TAG into TYPE".
func redactYAMLValue(m string) string {
	const p = "cannot unmarshal "
	i := strings.Index(m, p)
	if i < 0 {
		return m
	}
	rest := m[i+len(p):]
	j := strings.LastIndex(rest, " into ")
	if j < 0 {
		return m[:i+len(p)] + "(value redacted)"
	}
	tag, _, _ := strings.Cut(rest[:j], " ")
	return m[:i+len(p)] + tag + rest[j:]
}

func buildUser(e userEntry) (*userRecord, error) {
	if err := checkName("username", e.Username); err != nil {
		return nil, err
	}
	h, err := checkHash("password_hash", e.PasswordHash)
	if err != nil {
		return nil, err
	}
	if err := checkScopes(e.Scopes); err != nil {
		return nil, err
	}
	return &userRecord{
		user: User{Username: e.Username, PasswordHash: e.PasswordHash, Disabled: e.Disabled, Scopes: e.Scopes},
		hash: h,
	}, nil
}

func buildClient(e clientEntry) (*clientRecord, error) {
	if err := checkName("id", e.ID); err != nil {
		return nil, err
	}
	h, err := checkHash("secret_hash", e.SecretHash)
	if err != nil {
		return nil, err
	}
	if err := checkGrants(e.Grants); err != nil {
		return nil, err
	}
	if err := checkScopes(e.Scopes); err != nil {
		return nil, err
	}
	aud, err := parseAudience(&e.Audience)
	if err != nil {
		return nil, err
	}
	at, err := parseTTL("access_token_ttl", e.AccessTokenTTL)
	if err != nil {
		return nil, err
	}
	rt, err := parseTTL("refresh_token_ttl", e.RefreshTokenTTL)
	if err != nil {
		return nil, err
	}
	return &clientRecord{
		client: Client{
			ID: e.ID, SecretHash: e.SecretHash, Grants: e.Grants, Scopes: e.Scopes, Audience: aud,
			AccessTokenTTL: at, RefreshTokenTTL: rt, Disabled: e.Disabled,
		},
		hash: h,
	}, nil
}

// checkName accepts a username or client id: non-empty UTF-8 without
// whitespace or control characters, which would be invisible in logs, break
// HTTP Basic authentication, or make two names look alike.
func checkName(field, s string) error {
	if err := checkPrintable(s); err != nil {
		return fmt.Errorf("%s %w", field, err)
	}
	return nil
}

func checkPrintable(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > maxNameLen:
		return fmt.Errorf("is longer than %d bytes", maxNameLen)
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return errors.New("contains whitespace or a control character")
		}
	}
	return nil
}

// checkHash parses a PHC hash so a broken one fails at load time. The
// hash itself is never quoted: it might be a pasted password.
func checkHash(field, s string) (phcHash, error) {
	if s == "" {
		return phcHash{}, fmt.Errorf("%s is required (make one with `tokenwarden hash-password`)", field)
	}
	h, err := parsePHC(s)
	if err != nil {
		return phcHash{}, fmt.Errorf("%s: %w", field, err)
	}
	return h, nil
}

// checkScopes accepts RFC 6749 §3.3 scope-tokens: 1*( %x21 / %x23-5B /
// %x5D-7E ), i.e. printable ASCII except space, '"' and '\'. Duplicates are
// rejected as a likely editing mistake.
func checkScopes(scopes []string) error {
	seen := make(map[string]bool, len(scopes))
	for _, s := range scopes {
		if s == "" {
			return errors.New("empty scope")
		}
		if len(s) > maxNameLen {
			return fmt.Errorf("scope longer than %d bytes", maxNameLen)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return fmt.Errorf("scope %q is not an RFC 6749 scope-token (printable ASCII except space, '\"' and '\\')", s)
			}
		}
		if seen[s] {
			return fmt.Errorf("duplicate scope %q", s)
		}
		seen[s] = true
	}
	return nil
}

func checkGrants(grants []string) error {
	if len(grants) == 0 {
		return errors.New("no grants (want one or more of password, client_credentials, refresh_token)")
	}
	seen := make(map[string]bool, len(grants))
	for _, g := range grants {
		switch g {
		case GrantPassword, GrantClientCredentials, GrantRefreshToken:
		default:
			return fmt.Errorf("unknown grant %q (want password, client_credentials or refresh_token)", g)
		}
		if seen[g] {
			return fmt.Errorf("duplicate grant %q", g)
		}
		seen[g] = true
	}
	if seen[GrantRefreshToken] && !seen[GrantPassword] {
		return errors.New(`grant "refresh_token" requires grant "password" (refresh tokens are only issued to user logins)`)
	}
	return nil
}

// parseAudience accepts a string or a list of strings; absent or null is
// empty (the issuer's default).
func parseAudience(n *yaml.Node) ([]string, error) {
	var vals []*yaml.Node
	switch {
	case n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"):
		return nil, nil
	case n.Kind == yaml.ScalarNode:
		vals = []*yaml.Node{n}
	case n.Kind == yaml.SequenceNode:
		vals = n.Content
	default:
		return nil, errors.New("audience must be a string or a list of strings")
	}
	aud := make([]string, 0, len(vals))
	for _, v := range vals {
		if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
			return nil, errors.New("audience must be a string or a list of strings")
		}
		if err := checkPrintable(v.Value); err != nil {
			return nil, fmt.Errorf("audience %q %w", v.Value, err)
		}
		if slices.Contains(aud, v.Value) {
			return nil, fmt.Errorf("duplicate audience %q", v.Value)
		}
		aud = append(aud, v.Value)
	}
	return aud, nil
}

// parseTTL parses an optional Go duration ("10m", "24h"); empty is 0, the
// issuer's default.
func parseTTL(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w (want a Go duration such as 10m or 24h)", field, err)
	}
	if d < 0 {
		return 0, fmt.Errorf("%s must not be negative", field)
	}
	return d, nil
}
