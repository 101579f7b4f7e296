package client_test

// The client against the real chatradio-server (unary, stream, score,
// errors, retries, drain, TLS + token, two servers balanced). Run through
// clients/go/run_tests.sh, which sets the paths (internal/testserver).

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "chatradio/clients/go/chatradiov1"
	"chatradio/clients/go/client"
	"chatradio/clients/go/internal/testserver"
)

const findings = "The lungs are clear. No pleural effusion."

// timeout is generous for a loaded 2-core machine; patient spreads retries over it.
const timeout = 120 * time.Second

var patient = client.RetryPolicy{MaxAttempts: 1000, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Multiplier: 2}

func greedy() client.GenerateOptions {
	return client.GenerateOptions{Sampling: client.Greedy(24)}
}

func dial(t *testing.T, target string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(target, append([]client.Option{client.WithTimeout(timeout), client.WithTLS(nil), client.WithToken("")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// callError is err as the client's *Error, failing the test otherwise.
func callError(t *testing.T, err error, want codes.Code) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("want a *client.Error with %v, got %v", want, err)
	}
	if e.Code != want || status.Code(err) != want {
		t.Fatalf("want %v, got %v", want, err)
	}
	return e
}

func TestOneServer(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	c := dial(t, srv.Target)
	ctx := context.Background()

	t.Run("health", func(t *testing.T) {
		for _, service := range []string{client.Service, ""} {
			if s, err := c.Health(ctx, service); err != nil || s != "SERVING" {
				t.Fatalf("Health(%q) = %q, %v", service, s, err)
			}
		}
	})

	t.Run("unary", func(t *testing.T) {
		o := greedy()
		o.Report = client.Report{Language: "en", Modality: "xr", BodySystem: "chest", Institution: "site-1"}
		o.ClientRequestID = "go-unary"
		r, err := c.Impression(ctx, findings, o)
		if err != nil {
			t.Fatal(err)
		}
		if r.Impression == "" || r.ClientRequestId != "go-unary" || r.RequestId == "" {
			t.Fatalf("incomplete response: %v", r)
		}
		if r.Language != pb.Language_LANGUAGE_EN || r.Model.GetName() != "stories260K" {
			t.Fatalf("language %v, model %v", r.Language, r.Model)
		}
		if n := r.Tokens.GetGeneratedTokens(); n == 0 || n > 24 {
			t.Fatalf("generated %d tokens, want 1..24", n)
		}
		switch r.FinishReason {
		case pb.FinishReason_FINISH_REASON_EOS, pb.FinishReason_FINISH_REASON_LENGTH, pb.FinishReason_FINISH_REASON_REPETITION:
		default:
			t.Fatalf("finish reason %v", r.FinishReason)
		}
		// Greedy is deterministic; a seeded sample is repeatable.
		again, err := c.Impression(ctx, findings, greedy())
		if err != nil || again.Impression != r.Impression {
			t.Fatalf("greedy again: %q, %v; want %q", again.GetImpression(), err, r.Impression)
		}
		seeded := client.GenerateOptions{Sampling: client.Paper(42, 24)}
		a, errA := c.Impression(ctx, findings, seeded)
		b, errB := c.Impression(ctx, findings, seeded)
		if errA != nil || errB != nil || a.Impression != b.Impression {
			t.Fatalf("seeded: %q (%v) != %q (%v)", a.GetImpression(), errA, b.GetImpression(), errB)
		}
	})

	t.Run("stream", func(t *testing.T) {
		st := c.StreamImpression(ctx, findings, greedy())
		defer st.Close()
		var deltas []string
		for st.Next() {
			if st.Delta() == "" {
				t.Fatal("empty delta")
			}
			deltas = append(deltas, st.Delta())
		}
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		if len(deltas) == 0 || strings.Join(deltas, "") != st.Final().GetImpression() {
			t.Fatalf("deltas %q do not make the final %q", deltas, st.Final().GetImpression())
		}
		unary, err := c.Impression(ctx, findings, greedy())
		if err != nil || unary.Impression != st.Final().Impression {
			t.Fatalf("unary %q (%v) != streamed %q", unary.GetImpression(), err, st.Final().Impression)
		}
	})

	t.Run("stream closed early", func(t *testing.T) {
		st := c.StreamImpression(ctx, findings, client.GenerateOptions{Sampling: client.Greedy(400)})
		if !st.Next() {
			t.Fatalf("no first delta: %v", st.Err())
		}
		st.Close() // cancels the call; the server answers later calls as usual
		if st.Next() {
			t.Fatal("Next after Close")
		}
		if _, err := c.Impression(ctx, findings, greedy()); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("score", func(t *testing.T) {
		r, err := c.Score(ctx, findings, "No acute disease.", "No acute cardiopulmonary disease.",
			client.ScoreOptions{PerTokenLogprobs: true, RougeMode: "lin"})
		if err != nil {
			t.Fatal(err)
		}
		if r.TotalLogprob >= 0 || len(r.TokenLogprobs) != int(r.CandidateTokens) {
			t.Fatalf("total %v, %d per-token values for %d tokens", r.TotalLogprob, len(r.TokenLogprobs), r.CandidateTokens)
		}
		sum := 0.0
		for _, tok := range r.TokenLogprobs {
			sum += float64(tok.Logprob)
		}
		if math.Abs(sum-r.TotalLogprob) > 1e-3 {
			t.Fatalf("per-token sum %v != total %v", sum, r.TotalLogprob)
		}
		// Lin/rouge-score words: {no, acute, disease} vs {no, acute, cardiopulmonary, disease}.
		if r.RougeMode != pb.RougeMode_ROUGE_MODE_LIN || math.Abs(r.Rouge.GetRouge1().GetPrecision()-1) > 1e-9 ||
			math.Abs(r.Rouge.GetRouge1().GetRecall()-0.75) > 1e-9 {
			t.Fatalf("ROUGE %v (%v)", r.Rouge, r.RougeMode)
		}
		// The default mode is the rouge_chinese-compatible one, with jieba.
		zh, err := c.Score(ctx, "双肺纹理清晰。", "右肺上叶炎性病变", "右肺上叶炎性病变（符合病毒性肺炎）", client.ScoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if zh.RougeMode != pb.RougeMode_ROUGE_MODE_CHINESE_COMPAT || zh.RougeSegmenter != pb.ScoreRequest_SEGMENTER_JIEBA {
			t.Fatalf("default ROUGE: %v, %v", zh.RougeMode, zh.RougeSegmenter)
		}
		same, err := c.Score(ctx, findings, "No acute disease.", "No acute disease.", client.ScoreOptions{})
		if err != nil || math.Abs(same.Rouge.GetRougeL().GetF1()-1) > 1e-6 {
			t.Fatalf("identical texts: %v, %v", same.GetRouge(), err)
		}
		noRef, err := c.Score(ctx, findings, "No acute disease.", "", client.ScoreOptions{})
		if err != nil || noRef.Rouge != nil {
			t.Fatalf("no reference: ROUGE %v, %v", noRef.GetRouge(), err)
		}
	})

	t.Run("errors carry status codes", func(t *testing.T) {
		_, err := c.Impression(ctx, "   ", client.GenerateOptions{})
		e := callError(t, err, codes.InvalidArgument)
		if !strings.Contains(e.Message, "findings is empty") || e.Attempts != 1 {
			t.Fatalf("%v after %d attempts", e, e.Attempts) // never retried
		}
		topP := float32(1.5)
		_, err = c.Impression(ctx, findings, client.GenerateOptions{Sampling: &client.Sampling{TopP: &topP}})
		if e := callError(t, err, codes.InvalidArgument); !strings.Contains(e.Message, "top_p") {
			t.Fatal(e)
		}
		_, err = c.Impression(ctx, findings, client.GenerateOptions{Report: client.Report{Template: "no-such-template"}})
		callError(t, err, codes.NotFound)
		_, err = c.Score(ctx, findings, "", "", client.ScoreOptions{})
		callError(t, err, codes.InvalidArgument)
		// A number is sent as is: the server names the unknown value.
		_, err = c.Impression(ctx, findings, client.GenerateOptions{Priority: "7"})
		if e := callError(t, err, codes.InvalidArgument); !strings.Contains(e.Message, "priority 7") {
			t.Fatal(e)
		}
		// The deadline covers the call: far too short for 400 tokens.
		short, cancel := context.WithTimeout(ctx, time.Millisecond)
		defer cancel()
		_, err = c.Impression(short, findings, client.GenerateOptions{Sampling: client.Greedy(400)})
		callError(t, err, codes.DeadlineExceeded)
		// An unknown name is refused before any call, with a plain error.
		_, err = c.Impression(ctx, findings, client.GenerateOptions{Report: client.Report{Language: "klingon"}})
		var e2 *client.Error
		if err == nil || errors.As(err, &e2) || !strings.Contains(err.Error(), `unknown language "klingon"; known: auto, en, zh`) {
			t.Fatalf("unknown language: %v", err)
		}
	})
}

func TestServerStartedLate(t *testing.T) {
	testserver.Require(t)
	port := testserver.FreePort(t)
	target := "127.0.0.1:" + strconv.Itoa(port)
	type result struct {
		r   *pb.GenerateImpressionResponse
		err error
	}
	done := make(chan result, 1)
	c := dial(t, target, client.WithRetry(patient))
	go func() {
		r, err := c.Impression(context.Background(), findings, greedy())
		done <- result{r, err}
	}()
	// Nothing listens yet: UNAVAILABLE, which the patient call keeps retrying.
	probe := dial(t, target, client.WithRetry(client.NoRetry))
	_, err := probe.Impression(context.Background(), findings, greedy())
	callError(t, err, codes.Unavailable)
	testserver.Start(t, testserver.Options{Port: port})
	select {
	case res := <-done:
		if res.err != nil || res.r.Impression == "" {
			t.Fatalf("late server: %v, %v", res.r, res.err)
		}
	case <-time.After(timeout):
		t.Fatal("the retried call did not finish")
	}
}

func TestOverloadIsRetried(t *testing.T) {
	// RESOURCE_EXHAUSTED (queue full) is retried and every request succeeds.
	// Bursts repeat until the server has refused at least one, so the test
	// holds however the machine schedules the goroutines.
	srv := testserver.Start(t, testserver.Options{ExtraArgs: []string{"--max-batch-size", "1", "--max-waiting", "1"}})
	c := dial(t, srv.Target, client.WithRetry(patient))
	for burst := 0; burst < 20 && srv.Requests(t, "GenerateImpression", "RESOURCE_EXHAUSTED") == 0; burst++ {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		start := make(chan struct{})
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := c.Impression(context.Background(), findings, client.GenerateOptions{Sampling: client.Greedy(200)})
				errs <- err
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if srv.Requests(t, "GenerateImpression", "RESOURCE_EXHAUSTED") == 0 {
		t.Fatal("the server never refused a request: overload not exercised")
	}
}

func TestNoRetryAfterStreamedText(t *testing.T) {
	// A stream that fails after text arrived returns the error at once
	// (Attempts == 1) instead of starting over and repeating text.
	for try := 0; try < 5; try++ {
		srv := testserver.Start(t, testserver.Options{})
		c := dial(t, srv.Target, client.WithRetry(patient))
		st := c.StreamImpression(context.Background(), findings, client.GenerateOptions{Sampling: client.Paper(1, 400)})
		if !st.Next() {
			t.Fatalf("no first delta: %v", st.Err())
		}
		srv.Kill()
		for st.Next() {
		}
		st.Close()
		if st.Err() != nil {
			if e := callError(t, st.Err(), codes.Unavailable); e.Attempts != 1 {
				t.Fatalf("retried after text: %v after %d attempts", e, e.Attempts)
			}
			return
		}
		// The whole stream was already buffered before the kill: try again.
	}
	t.Fatal("the stream always finished before the server was killed")
}

func TestDrainMovesTrafficToTheOtherServer(t *testing.T) {
	a := testserver.Start(t, testserver.Options{ExtraArgs: []string{"--drain-grace", "5"}})
	b := testserver.Start(t, testserver.Options{})
	c := dial(t, a.Target+","+b.Target)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		if _, err := c.Impression(ctx, findings, greedy()); err != nil {
			t.Fatal(err)
		}
	}
	a.Signal(syscall.SIGTERM)
	a.WaitEvent(t, "draining")
	before := b.Requests(t, "GenerateImpression", "OK")
	for i := 0; i < 10; i++ {
		if _, err := c.Impression(ctx, findings, greedy()); err != nil {
			t.Fatal(err)
		}
	}
	// All went to B: A's health watch took it out of the rotation, and a
	// call that met its UNAVAILABLE first was retried.
	if got := b.Requests(t, "GenerateImpression", "OK") - before; got != 10 {
		t.Fatalf("server B answered %v of 10 calls during A's drain", got)
	}
}

func TestBalancedPerRequest(t *testing.T) {
	a := testserver.Start(t, testserver.Options{})
	b := testserver.Start(t, testserver.Options{})
	// A list of addresses, and a list of names.
	for _, target := range []string{a.Target + "," + b.Target, "localhost:" + strconv.Itoa(a.Port) + ", localhost:" + strconv.Itoa(b.Port)} {
		beforeA, beforeB := a.Requests(t, "GenerateImpression", "OK"), b.Requests(t, "GenerateImpression", "OK")
		c := dial(t, target)
		for i := 0; i < 10; i++ {
			if _, err := c.Impression(context.Background(), findings, greedy()); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		da := a.Requests(t, "GenerateImpression", "OK") - beforeA
		db := b.Requests(t, "GenerateImpression", "OK") - beforeB
		if da+db != 10 || da == 0 || db == 0 {
			t.Fatalf("target %q: server A got %v calls, B %v; want both > 0, 10 in all", target, da, db)
		}
	}
}

func TestMutualTLSAndToken(t *testing.T) {
	testserver.Require(t)
	pki := testserver.NewPKI(t)
	tokens := filepath.Join(pki.Dir, "tokens.txt")
	if err := os.WriteFile(tokens, []byte("# test tokens\nsecret-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testserver.Start(t, testserver.Options{ExtraArgs: []string{"--tls-cert", pki.Path("server.pem"),
		"--tls-key", pki.Path("server.key"), "--tls-client-ca", pki.Path("ca.pem"), "--auth-token-file", tokens}})
	mtls := &client.TLS{CA: pki.Path("ca.pem"), Cert: pki.Path("client.pem"), Key: pki.Path("client.key")}
	target := "localhost:" + strconv.Itoa(srv.Port)
	ctx := context.Background()

	c := dial(t, target, client.WithTLS(mtls), client.WithToken("secret-1"))
	if _, err := c.Impression(ctx, findings, greedy()); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Health(ctx, client.Service); err != nil || s != "SERVING" {
		t.Fatalf("health over mTLS: %q, %v", s, err)
	}
	for _, token := range []string{"", "wrong"} {
		c := dial(t, target, client.WithTLS(mtls), client.WithToken(token))
		_, err := c.Impression(ctx, findings, greedy())
		callError(t, err, codes.Unauthenticated)
	}
	// No client certificate: the handshake fails (UNAVAILABLE, retried, then returned).
	noCert := dial(t, target, client.WithTLS(&client.TLS{CA: pki.Path("ca.pem")}), client.WithToken("secret-1"),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 2, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}))
	_, err := noCert.Impression(ctx, findings, greedy())
	if e := callError(t, err, codes.Unavailable); e.Attempts != 2 {
		t.Fatalf("%v after %d attempts, want 2", e, e.Attempts)
	}
	// Everything from the environment; the IP address verified as the certificate's localhost.
	for k, v := range map[string]string{"CHATRADIO_TARGET": srv.Target, "CHATRADIO_TOKEN": "secret-1",
		"CHATRADIO_TLS_CA": pki.Path("ca.pem"), "CHATRADIO_TLS_CERT": pki.Path("client.pem"),
		"CHATRADIO_TLS_KEY": pki.Path("client.key"), "CHATRADIO_TLS_SERVER_NAME": "localhost"} {
		t.Setenv(k, v)
	}
	env, err := client.New("", client.WithTimeout(timeout))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if _, err := env.Impression(ctx, findings, greedy()); err != nil {
		t.Fatal(err)
	}
}
