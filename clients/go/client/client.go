// Package client is a small client for chatradio-server
// (chatradio.v1.ImpressionService) over the generated stubs in chatradiov1:
// deadlines on every call, retries with backoff where they are safe, TLS,
// mutual TLS and bearer tokens, and per-request balancing over several
// servers.
//
//	c, err := client.New("localhost:50051")
//	if err != nil { ... }
//	defer c.Close()
//	r, err := c.Impression(ctx, "The lungs are clear.", client.GenerateOptions{Report: client.Report{Language: "en"}})
//	fmt.Println(r.Impression, r.FinishReason)
//
// Every failed call returns an *Error carrying the gRPC status code.
package client

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/health" // registers client-side health checking (serviceConfig)
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	pb "chatradio/clients/go/chatradiov1"
)

// Client is a connection to one or more chatradio servers; safe for
// concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	rpc     pb.ImpressionServiceClient
	health  healthpb.HealthClient
	token   string
	timeout time.Duration
	retry   retrier
}

// New connects to `target`: "host:port", any gRPC target ("dns:///name:port"
// balances over every address the name has), or a comma-separated list of
// host:port (balanced per request); "" = $CHATRADIO_TARGET or DefaultTarget.
// The connection is made lazily; New fails only on bad settings.
func New(target string, opts ...Option) (*Client, error) {
	s := settings{timeout: DefaultTimeout, retry: DefaultRetry, healthCheck: true}
	for _, o := range opts {
		o(&s)
	}
	if s.timeout <= 0 {
		return nil, fmt.Errorf("the call timeout must be positive, got %v", s.timeout)
	}
	if target == "" {
		target = os.Getenv("CHATRADIO_TARGET")
	}
	if target == "" {
		target = DefaultTarget
	}
	if !s.tokenSet {
		t, err := tokenFromEnv()
		if err != nil {
			return nil, err
		}
		s.token = t
	}
	if !s.tlsSet {
		s.tls = TLSFromEnv()
	}
	var creds credentials.TransportCredentials
	if s.tls != nil {
		c, err := s.tls.credentials()
		if err != nil {
			return nil, err
		}
		creds = c
	}
	dialTo, resolverOpts, err := dialTarget(target)
	if err != nil {
		return nil, err
	}
	dopts := append(dialOptions(creds, s.healthCheck), resolverOpts...)
	conn, err := grpc.Dial(dialTo, append(dopts, s.dial...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:    conn,
		rpc:     pb.NewImpressionServiceClient(conn),
		health:  healthpb.NewHealthClient(conn),
		token:   s.token,
		timeout: s.timeout,
		retry:   retrier{policy: s.retry, jitter: newJitter()},
	}, nil
}

// Close closes the connection; calls in flight fail with CANCELED.
func (c *Client) Close() error {
	return c.conn.Close()
}

// callContext bounds a call by the client's timeout (the caller's earlier
// deadline wins) and adds the bearer token.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx, cancel
}

// unary runs `call` with retries until it succeeds or must give up.
func unary[T any](ctx context.Context, c *Client, call func(context.Context) (T, error)) (T, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		r, err := call(ctx)
		if err == nil {
			return r, nil
		}
		if perr := c.retry.pause(ctx, err, attempt); perr != nil {
			var zero T
			return zero, perr
		}
	}
}

// Impression generates the impression for `findings`.
func (c *Client) Impression(ctx context.Context, findings string, o GenerateOptions) (*pb.GenerateImpressionResponse, error) {
	req, err := generateRequest(findings, o)
	if err != nil {
		return nil, err
	}
	return unary(ctx, c, func(ctx context.Context) (*pb.GenerateImpressionResponse, error) {
		return c.rpc.GenerateImpression(ctx, req)
	})
}

// Score is the log-probability of `candidate` given `findings`, and ROUGE
// against `reference` when it is not "".
func (c *Client) Score(ctx context.Context, findings, candidate, reference string, o ScoreOptions) (*pb.ScoreResponse, error) {
	req, err := scoreRequest(findings, candidate, reference, o)
	if err != nil {
		return nil, err
	}
	return unary(ctx, c, func(ctx context.Context) (*pb.ScoreResponse, error) {
		return c.rpc.Score(ctx, req)
	})
}

// Health is the server's health for `service` ("SERVING", "NOT_SERVING"...;
// "" = the whole server, Service = the impression service). Not retried: it
// reports the state right now. With several servers, one of them answers;
// servers that are not SERVING are skipped unless the client was made
// WithoutHealthCheck (when none serves, the call fails with UNAVAILABLE).
func (c *Client) Health(ctx context.Context, service string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	r, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return "", callError(err, 1)
	}
	return r.Status.String(), nil
}
