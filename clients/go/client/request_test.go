package client

import (
	"math/rand"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "chatradio/clients/go/chatradiov1"
)

func TestEnumNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		want pb.Modality
	}{{"", pb.Modality_MODALITY_UNSPECIFIED}, {"ct", pb.Modality_MODALITY_CT}, {"PET-CT", pb.Modality_MODALITY_PET_CT},
		{"MODALITY_XR", pb.Modality_MODALITY_XR}, {" us ", pb.Modality_MODALITY_US}, {"6", pb.Modality_MODALITY_OTHER}} {
		v, err := enumValue(pb.Modality_value, "MODALITY_", "modality", tc.name)
		if err != nil || pb.Modality(v) != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.name, pb.Modality(v), err, tc.want)
		}
	}
	_, err := enumValue(pb.BodySystem_value, "BODY_SYSTEM_", "body system", "toes")
	want := `unknown body system "toes"; known: abdomen, chest, head, maxillofacial-neck, musculoskeletal, other`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestRequests(t *testing.T) {
	req, err := generateRequest("f", GenerateOptions{
		Report:   Report{Language: "zh", BodySystem: "chest", Institution: "i", Template: "tpl"},
		Sampling: Paper(7, 64), Priority: "stat", ClientRequestID: "id",
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.Context.Language != pb.Language_LANGUAGE_ZH || req.Context.BodySystem != pb.BodySystem_BODY_SYSTEM_CHEST ||
		req.Context.InstitutionId != "i" || req.Context.TemplateId != "tpl" || req.Priority != pb.Priority_PRIORITY_STAT ||
		req.Sampling.Preset != pb.SamplingParams_PRESET_PAPER || req.Sampling.GetSeed() != 7 ||
		req.Sampling.GetMaxTokens() != 64 || req.Sampling.Temperature != nil || req.ClientRequestId != "id" {
		t.Fatalf("request %v", req)
	}
	if req, _ := generateRequest("f", GenerateOptions{}); req.Sampling != nil {
		t.Fatal("nil Sampling must leave the server's default")
	}
	if g := Greedy(0); g.MaxTokens != nil {
		t.Fatal("Greedy(0) must leave max_tokens to the preset")
	}
	s, err := scoreRequest("f", "c", "r", ScoreOptions{RougeMode: "chinese-compat", RougeSegmenter: "jieba-no-hmm", PerTokenLogprobs: true})
	if err != nil || s.RougeMode != pb.RougeMode_ROUGE_MODE_CHINESE_COMPAT ||
		s.RougeSegmenter != pb.ScoreRequest_SEGMENTER_JIEBA_NO_HMM || !s.PerTokenLogprobs || s.ReferenceImpression != "r" {
		t.Fatalf("score request %v, %v", s, err)
	}
	if _, err := scoreRequest("f", "c", "", ScoreOptions{RougeMode: "bleu"}); err == nil || !strings.Contains(err.Error(), "ROUGE mode") {
		t.Fatalf("bad mode: %v", err)
	}
}

func TestRetryPolicy(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 4, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, Multiplier: 2}
	rng := rand.New(rand.NewSource(1))
	for attempt, ceiling := range []time.Duration{100, 200, 300, 300} {
		for i := 0; i < 200; i++ {
			if d := p.Backoff(attempt, rng); d < 0 || d > ceiling*time.Millisecond {
				t.Fatalf("attempt %d: backoff %v outside [0, %v ms]", attempt, d, ceiling)
			}
		}
	}
	for _, c := range []codes.Code{codes.Unavailable, codes.ResourceExhausted} {
		if !p.Retryable(c, 2) || p.Retryable(c, 3) {
			t.Errorf("%v: retryable before the last attempt only", c)
		}
	}
	for _, c := range []codes.Code{codes.InvalidArgument, codes.DeadlineExceeded, codes.Internal, codes.Unauthenticated, codes.Canceled} {
		if p.Retryable(c, 0) {
			t.Errorf("%v must not be retried", c)
		}
	}
	if NoRetry.Retryable(codes.Unavailable, 0) {
		t.Error("NoRetry retries")
	}
	if got := (&Error{Code: codes.ResourceExhausted, Message: "overloaded"}).Error(); got != "RESOURCE_EXHAUSTED: overloaded" {
		t.Errorf("Error() = %q", got)
	}
}
