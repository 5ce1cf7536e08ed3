package directory

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// defaultPollInterval is how often Run looks at the files: quick enough that
// an edited ConfigMap takes effect soon after the kubelet syncs it, cheap
// enough (two small reads and hashes) to be negligible.
const defaultPollInterval = 2 * time.Second

// Watcher holds the current Directory and replaces it when the files change,
// so users and clients can be edited without restarting the issuer. A bad
// edit is logged and ignored: the previous directory stays in force.
type Watcher struct {
	usersFile, clientsFile string
	logger                 *slog.Logger
	interval               time.Duration
	onReload               func(*Directory)

	cur atomic.Pointer[Directory]

	mu      sync.Mutex  // serialises reloads; guards the fields below
	seen    fingerprint // content last loaded or last tried
	pollErr string      // last read error logged by poll, to log it only once
}

// fingerprint identifies the files' contents. Content, not modification time,
// because a Kubernetes ConfigMap update swaps a symlink to a new directory
// and the file's mtime may not change in a way a stat would notice.
type fingerprint struct{ users, clients [sha256.Size]byte }

// WatcherOption configures a Watcher.
type WatcherOption func(*Watcher)

// WithPollInterval sets how often Run checks the files for changes (default
// 2s; a non-positive d keeps the default).
func WithPollInterval(d time.Duration) WatcherOption {
	return func(w *Watcher) {
		if d > 0 {
			w.interval = d
		}
	}
}

// WithOnReload registers f to be called with each new Directory after a
// successful reload (not after the initial load), e.g. to update metrics or
// log counts. f runs while the reload lock is held, so calls arrive in order;
// it must not call Reload.
func WithOnReload(f func(*Directory)) WatcherOption {
	return func(w *Watcher) { w.onReload = f }
}

// NewWatcher loads the users and clients files (either path may be "") and
// returns a Watcher holding the result. The initial load must succeed: a
// process that starts with a broken directory would refuse every login, so
// the error (naming the file and line) should stop it instead. A nil logger
// discards logs.
func NewWatcher(usersFile, clientsFile string, logger *slog.Logger, opts ...WatcherOption) (*Watcher, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{usersFile: usersFile, clientsFile: clientsFile, logger: logger, interval: defaultPollInterval}
	for _, o := range opts {
		o(w)
	}
	ub, cb, fp, err := w.read()
	if err != nil {
		return nil, err
	}
	d, err := parse(ub, cb, nameOr(usersFile, defaultUsersName), nameOr(clientsFile, defaultClientsName), newShared())
	if err != nil {
		return nil, err
	}
	w.cur.Store(d)
	w.seen = fp
	return w, nil
}

// Current returns the directory in force. It is a lock-free atomic load and
// never returns nil, so request handlers may call it on every request.
func (w *Watcher) Current() *Directory {
	return w.cur.Load()
}

// Reload re-reads both files now, whether or not they changed (the command
// calls it on SIGHUP). On success the new directory replaces the old one. On
// failure it logs one line at Error level naming the file and the problem,
// keeps the old directory, and returns the error.
func (w *Watcher) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ub, cb, fp, err := w.read()
	if err != nil {
		w.logFailure(err)
		return err
	}
	return w.apply(ub, cb, fp)
}

// Run polls the files every poll interval and reloads when their content
// changes, until ctx is done. It first makes the dummy hash used for unknown
// names, so the first such login does not pay for it.
func (w *Watcher) Run(ctx context.Context) {
	w.Current().shared.dummyHash()
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// poll reloads if the content differs from what was last loaded or tried, so
// a bad file is reported once rather than every interval.
func (w *Watcher) poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	ub, cb, fp, err := w.read()
	if err != nil {
		if err.Error() != w.pollErr {
			w.pollErr = err.Error()
			w.logFailure(err)
		}
		return
	}
	w.pollErr = ""
	if fp == w.seen {
		return
	}
	_ = w.apply(ub, cb, fp) // apply logs failures
}

// apply parses the contents and installs the result. The new directory shares
// the old one's cache and keys: cache keys include each secret's hash, so
// cached verifications stay correct across the change. w.mu must be held.
func (w *Watcher) apply(ub, cb []byte, fp fingerprint) error {
	w.seen = fp
	d, err := parse(ub, cb, nameOr(w.usersFile, defaultUsersName), nameOr(w.clientsFile, defaultClientsName), w.cur.Load().shared)
	if err != nil {
		w.logFailure(err)
		return err
	}
	w.cur.Store(d)
	w.logger.Info("users and clients reloaded", "users", d.Users(), "clients", d.Clients())
	if w.onReload != nil {
		w.onReload(d)
	}
	return nil
}

func (w *Watcher) read() ([]byte, []byte, fingerprint, error) {
	ub, err := readFile(w.usersFile)
	if err != nil {
		return nil, nil, fingerprint{}, err
	}
	cb, err := readFile(w.clientsFile)
	if err != nil {
		return nil, nil, fingerprint{}, err
	}
	return ub, cb, fingerprint{users: sha256.Sum256(ub), clients: sha256.Sum256(cb)}, nil
}

// logFailure logs a failed reload as one line with the file, line and
// problem as attributes. Errors never contain passwords or secrets.
func (w *Watcher) logFailure(err error) {
	attrs := []any{}
	var fe *fileError
	if errors.As(err, &fe) {
		attrs = append(attrs, "file", fe.file)
		if fe.line > 0 {
			attrs = append(attrs, "line", fe.line)
		}
		attrs = append(attrs, "error", fe.err.Error())
	} else {
		attrs = append(attrs, "error", err.Error())
	}
	w.logger.Error("reloading users and clients failed; keeping the previous ones", attrs...)
}
