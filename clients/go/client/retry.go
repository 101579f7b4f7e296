package client

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy is exponential backoff with full jitter: after failed attempt
// k (0-based) the client waits a uniform random time in
// [0, min(MaxBackoff, InitialBackoff * Multiplier^k)]. Only UNAVAILABLE
// (loading, draining, unreachable) and RESOURCE_EXHAUSTED (queue full) are
// retried — both mean the server did no work — and a stream only before its
// first text arrived. The call's deadline bounds all attempts together.
type RetryPolicy struct {
	MaxAttempts    int // total attempts, the first included; 1 = no retry
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
}

// DefaultRetry is the policy of a client made without WithRetry.
var DefaultRetry = RetryPolicy{MaxAttempts: 5, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2}

// NoRetry makes every call a single attempt.
var NoRetry = RetryPolicy{MaxAttempts: 1}

// Backoff is the pause after failed attempt `attempt` (0-based), drawn with `rng`.
func (p RetryPolicy) Backoff(attempt int, rng *rand.Rand) time.Duration {
	ceiling := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(attempt)))
	return time.Duration(rng.Float64() * ceiling)
}

// Retryable reports whether a call that failed with `code` on attempt
// `attempt` (0-based) may be tried again.
func (p RetryPolicy) Retryable(code codes.Code, attempt int) bool {
	return (code == codes.Unavailable || code == codes.ResourceExhausted) && attempt+1 < p.MaxAttempts
}

// Error is what every failed call returns: the gRPC status code, the
// server's message and how many attempts were made. status.Code(err) and
// status.FromError(err) work on it.
type Error struct {
	Code     codes.Code
	Message  string
	Attempts int
}

// Error is "CODE_NAME: message", the code as the gRPC spec names it.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", codeName(e.Code), e.Message)
}

// codeNames: the spec's names (codes.Code's String is CamelCase).
var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return c.String()
}

// GRPCStatus makes status.Code and status.FromError see the call's status.
func (e *Error) GRPCStatus() *status.Status {
	return status.New(e.Code, e.Message)
}

func callError(err error, attempts int) *Error {
	s := status.Convert(err)
	return &Error{Code: s.Code(), Message: s.Message(), Attempts: attempts}
}

// retrier paces the attempts of one call.
type retrier struct {
	policy RetryPolicy
	jitter *jitter
}

// pause waits before the next attempt after `err` failed attempt `attempt`
// (0-based), or returns the call's *Error when it must not be retried: a
// code that is not retryable, no attempts left, or a pause that would pass
// the deadline.
func (r retrier) pause(ctx context.Context, err error, attempt int) error {
	wait := r.jitter.backoff(r.policy, attempt)
	if !r.policy.Retryable(status.Code(err), attempt) {
		return callError(err, attempt+1)
	}
	if d, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(d) {
		return callError(err, attempt+1)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return callError(status.FromContextError(ctx.Err()).Err(), attempt+1)
	}
}

// jitter is the random source of a client's concurrent calls.
type jitter struct {
	mu  sync.Mutex
	rng *rand.Rand
}

func newJitter() *jitter {
	return &jitter{rng: rand.New(rand.NewSource(time.Now().UnixNano()))}
}

func (j *jitter) backoff(p RetryPolicy, attempt int) time.Duration {
	j.mu.Lock()
	defer j.mu.Unlock()
	return p.Backoff(attempt, j.rng)
}
