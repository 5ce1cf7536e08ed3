package testenv

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Run runs f in the background until the returned stop is called or the
// test ends. stop cancels f's context and fails the test if f then returns
// an error or does not return within the given time.
func Run(t testing.TB, within time.Duration, f func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			case <-time.After(within):
				t.Errorf("Run did not return within %s of its context ending", within)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
