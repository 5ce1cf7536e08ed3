// Package directory holds the issuer's users and OAuth2 clients.
//
// Both are read from YAML files (users.yaml and clients.yaml, formats in
// docs/users-and-clients.md) into an immutable [Directory] snapshot, so a
// request handler sees one consistent view for its whole lifetime without
// locking. A [Watcher] swaps in a new snapshot when the files change (polled
// by content hash, so Kubernetes ConfigMap symlink swaps are seen) or on
// demand (SIGHUP), and keeps the previous snapshot when the new files are bad,
// so a typo never locks every user out.
//
// Passwords and client secrets are stored only as argon2id hashes in the PHC
// string format ([HashPassword], [VerifyPassword]). Authentication does the
// same argon2id work for unknown, disabled and known names, so response time
// does not reveal which names exist. Successful client-secret verifications
// are cached briefly (client_credentials is a machine-to-machine hot path);
// user passwords never are.
package directory
