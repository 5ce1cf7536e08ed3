//go:build race

package chaos

// raceEnabled: the kill test builds its go test run as this binary was
// built, so that the build cache serves it.
const raceEnabled = true
