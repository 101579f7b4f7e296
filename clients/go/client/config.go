package client

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// DefaultTarget is used when New gets "" and $CHATRADIO_TARGET is unset.
const DefaultTarget = "localhost:50051"

// DefaultTimeout bounds every call, retries included, unless WithTimeout or
// the caller's context says otherwise: generation on a loaded CPU can take
// minutes for a 7B model.
const DefaultTimeout = 300 * time.Second

// Service is the gRPC service name, also the name whose health is checked.
const Service = "chatradio.v1.ImpressionService"

// serviceConfig: per-request balancing over every address the target has
// (a list, a DNS name with many A records, a headless Service), with gRPC's
// client-side health checking (a Health.Watch stream per server), so a
// server that loads its model or drains reports NOT_SERVING and round_robin
// stops picking it before any call meets its UNAVAILABLE.
const (
	roundRobin    = `"loadBalancingConfig": [{"round_robin": {}}]`
	serviceConfig = `{` + roundRobin + `, "healthCheckConfig": {"serviceName": "` + Service + `"}}`
)

// TLS settings. CA: PEM file of the roots to trust ("" = the system's);
// Cert + Key: a client certificate for mutual TLS; ServerName: the name to
// verify in the server's certificate when it differs from the target's host.
type TLS struct {
	CA, Cert, Key, ServerName string
}

// TLSFromEnv reads CHATRADIO_TLS_CA, _CERT, _KEY, _SERVER_NAME, and
// CHATRADIO_TLS=1 for TLS with the system's roots; nil when none is set
// (plaintext).
func TLSFromEnv() *TLS {
	t := TLS{
		CA:         os.Getenv("CHATRADIO_TLS_CA"),
		Cert:       os.Getenv("CHATRADIO_TLS_CERT"),
		Key:        os.Getenv("CHATRADIO_TLS_KEY"),
		ServerName: os.Getenv("CHATRADIO_TLS_SERVER_NAME"),
	}
	on := map[string]bool{"1": true, "true": true, "yes": true}[os.Getenv("CHATRADIO_TLS")]
	if t == (TLS{}) && !on {
		return nil
	}
	return &t
}

func (t *TLS) credentials() (credentials.TransportCredentials, error) {
	if (t.Cert == "") != (t.Key == "") {
		return nil, errors.New("mutual TLS needs both a client certificate and its key")
	}
	cfg := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA: no PEM certificate in %s", t.CA)
		}
	}
	if t.Cert != "" {
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}

// Option configures New.
type Option func(*settings)

type settings struct {
	token    string
	tokenSet bool
	tls      *TLS
	tlsSet   bool
	timeout  time.Duration
	retry    RetryPolicy
	dial     []grpc.DialOption
	// healthCheck: watch each server's health and balance over SERVING ones.
	healthCheck bool
}

// WithToken sends `authorization: Bearer <token>` on every ImpressionService
// call. Without it: $CHATRADIO_TOKEN, else the first line of the file
// $CHATRADIO_TOKEN_FILE names; "" sends none.
func WithToken(token string) Option {
	return func(s *settings) { s.token, s.tokenSet = token, true }
}

// WithTLS connects over TLS (nil: plaintext). Without it: TLSFromEnv().
func WithTLS(t *TLS) Option {
	return func(s *settings) { s.tls, s.tlsSet = t, true }
}

// WithTimeout bounds every call, retries included (default DefaultTimeout);
// a context with an earlier deadline wins.
func WithTimeout(d time.Duration) Option {
	return func(s *settings) { s.timeout = d }
}

// WithRetry replaces DefaultRetry (NoRetry turns retries off).
func WithRetry(p RetryPolicy) Option {
	return func(s *settings) { s.retry = p }
}

// WithoutHealthCheck balances over every connected server, also those that
// report NOT_SERVING, so that Health reports their state instead of failing
// with UNAVAILABLE: for probes, not for traffic.
func WithoutHealthCheck() Option {
	return func(s *settings) { s.healthCheck = false }
}

// WithDialOptions adds gRPC dial options after the client's own.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dial = append(s.dial, opts...) }
}

func tokenFromEnv() (string, error) {
	if t := os.Getenv("CHATRADIO_TOKEN"); t != "" {
		return t, nil
	}
	path := os.Getenv("CHATRADIO_TOKEN_FILE")
	if path == "" {
		return "", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("CHATRADIO_TOKEN_FILE: %w", err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("CHATRADIO_TOKEN_FILE %s: no token on its first line", path)
	}
	return strings.TrimSpace(line), nil
}

// splitTargets turns "a:1,b:2" (or "a:1") into host:port addresses; nil when
// the target is one gRPC target string to hand to gRPC as is (dns:///name:port,
// unix:path, ipv4:..., a single host:port).
func splitTargets(target string) ([]string, error) {
	if strings.Contains(target, "://") || !strings.Contains(target, ",") {
		return nil, nil
	}
	var addrs []string
	for _, a := range strings.Split(target, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("target %q in the list is not host:port: %v", a, err)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("target %q lists no address", target)
	}
	return addrs, nil
}

// dialTarget is the target string for grpc.Dial plus the dial options that
// make it work: a list of addresses goes through a manual resolver private to
// this connection, each address verified by TLS against its own host name.
func dialTarget(target string) (string, []grpc.DialOption, error) {
	addrs, err := splitTargets(target)
	if err != nil || addrs == nil {
		return target, nil, err
	}
	r := manual.NewBuilderWithScheme("chatradio-list")
	state := resolver.State{}
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(state)
	return r.Scheme() + ":///list", []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

func dialOptions(creds credentials.TransportCredentials, healthCheck bool) []grpc.DialOption {
	config := serviceConfig
	if !healthCheck {
		config = "{" + roundRobin + "}"
	}
	opts := []grpc.DialOption{
		grpc.WithDefaultServiceConfig(config),
		// Ignore service configs published in DNS: the balancing is ours.
		grpc.WithDisableServiceConfig(),
		// Retries are ours (RetryPolicy): gRPC's own would double them.
		grpc.WithDisableRetry(),
		// The server accepts pings every 10 s at most; this stays well above.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		// gRPC's reconnect backoff grows to 120 s by default: a server that
		// starts late or comes back would be missed by every retry until then.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if creds == nil {
		return append(opts, grpc.WithInsecure())
	}
	return append(opts, grpc.WithTransportCredentials(creds))
}
