package client_test

import (
	"errors"
	"fmt"
	"log"
	"net/http"

	"github.com/tokenwarden/tokenwarden/sidecar/client"
)

// Verify a request's token with the sidecar next to the app.
func ExampleClient_Verify() {
	c := client.New("http://127.0.0.1:8181") // or "unix:///run/tokenwarden/sidecar.sock"
	http.HandleFunc("/orders", func(w http.ResponseWriter, r *http.Request) {
		id, err := c.Verify(r.Context(), r.Header.Get("Authorization"), "write")
		var verdict *client.Error
		switch {
		case errors.Is(err, client.ErrNoToken):
			w.Header().Set("WWW-Authenticate", client.WWWAuthenticate(err))
			w.WriteHeader(http.StatusUnauthorized)
			return
		case errors.As(err, &verdict): // invalid_token (401), insufficient_scope (403), …
			w.Header().Set("WWW-Authenticate", client.WWWAuthenticate(err))
			w.WriteHeader(verdict.Status)
			return
		case err != nil: // wraps client.ErrUnavailable: fail closed
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintf(w, "hello %s (client %s, scopes %v)\n", id.Subject, id.ClientID, id.Scopes)
	})
}

// Protect a whole handler: the middleware answers 401/403/503 itself.
func ExampleMiddleware() {
	c := client.New("http://127.0.0.1:8181")
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := client.IdentityFrom(r.Context())
		_, _ = fmt.Fprintf(w, "hello %s\n", id.Subject)
	})
	srv := &http.Server{Addr: "127.0.0.1:3000", Handler: client.Middleware(c, client.WithScopes("read"))(app)}
	log.Fatal(srv.ListenAndServe())
}
