package client

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	pb "chatradio/clients/go/chatradiov1"
)

// Report says where a report comes from and what it is; it selects the prompt
// template. Enum fields take the short names, case-insensitive, with or
// without the proto prefix ("zh", "LANGUAGE_ZH", "pet-ct"); "" is the server's
// default (language: detected from the findings).
type Report struct {
	Language    string // zh, en, auto
	Modality    string // ct, mr, xr, us, pet-ct, other
	BodySystem  string // chest, abdomen, musculoskeletal, head, maxillofacial-neck, other
	Institution string // site id, for the server's logs and metrics only
	Template    string // template id; "" = the server's for (language, body system)
}

// Sampling settings; nil fields take the preset's value on the server.
// Preset: "paper" (temperature 1.0, top-k 50, top-p 1.0, max 512), "greedy",
// or "" for the server's default.
type Sampling struct {
	Preset            string
	MaxTokens         *uint32
	Temperature       *float32
	TopK              *uint32
	TopP              *float32
	RepetitionPenalty *float32
	Seed              *uint64
}

// Greedy is deterministic argmax decoding of at most maxTokens tokens (0 = the
// preset's 512, lowered to what the context leaves).
func Greedy(maxTokens uint32) *Sampling {
	return &Sampling{Preset: "greedy", MaxTokens: optional(maxTokens)}
}

// Paper is the ChatRadio-Valuer paper's sampling with a fixed seed, so that a
// request is repeatable; maxTokens 0 = the preset's 512.
func Paper(seed uint64, maxTokens uint32) *Sampling {
	return &Sampling{Preset: "paper", Seed: &seed, MaxTokens: optional(maxTokens)}
}

func optional(v uint32) *uint32 {
	if v == 0 {
		return nil
	}
	return &v
}

// GenerateOptions are the optional parts of an Impression or
// StreamImpression request.
type GenerateOptions struct {
	Report
	Sampling        *Sampling // nil: the server's default preset
	Priority        string    // routine (default) or stat
	ClientRequestID string    // echoed back and logged (never the text)
}

// ScoreOptions are the optional parts of a Score request.
type ScoreOptions struct {
	Report
	Priority         string
	ClientRequestID  string
	PerTokenLogprobs bool
	// RougeMode: "chinese-compat" (rouge_chinese 1.0.3, the server's default)
	// or "lin" (rouge-score); docs/rouge.md.
	RougeMode string
	// RougeSegmenter: char, jieba, jieba-no-hmm, english; "" = the mode's default.
	RougeSegmenter string
}

// enumValue maps a short or full name to its value in `values` (a generated
// *_value map); "" is 0, the server's default. A number is sent as is, so that
// a value newer than this client can be named (the server validates it).
func enumValue(values map[string]int32, prefix, what, name string) (int32, error) {
	if name == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(name, 10, 32); err == nil {
		return int32(n), nil
	}
	full := strings.ToUpper(strings.TrimSpace(name))
	full = strings.NewReplacer("-", "_", " ", "_").Replace(full)
	if !strings.HasPrefix(full, prefix) {
		full = prefix + full
	}
	if v, ok := values[full]; ok {
		return v, nil
	}
	known := make([]string, 0, len(values))
	for n := range values {
		if !strings.HasSuffix(n, "UNSPECIFIED") {
			known = append(known, strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(n, prefix)), "_", "-"))
		}
	}
	sort.Strings(known)
	return 0, fmt.Errorf("unknown %s %q; known: %s", what, name, strings.Join(known, ", "))
}

func (r Report) proto() (*pb.ReportContext, error) {
	lang, err := enumValue(pb.Language_value, "LANGUAGE_", "language", r.Language)
	if err != nil {
		return nil, err
	}
	mod, err := enumValue(pb.Modality_value, "MODALITY_", "modality", r.Modality)
	if err != nil {
		return nil, err
	}
	sys, err := enumValue(pb.BodySystem_value, "BODY_SYSTEM_", "body system", r.BodySystem)
	if err != nil {
		return nil, err
	}
	return &pb.ReportContext{
		Language:      pb.Language(lang),
		Modality:      pb.Modality(mod),
		BodySystem:    pb.BodySystem(sys),
		InstitutionId: r.Institution,
		TemplateId:    r.Template,
	}, nil
}

func (s *Sampling) proto() (*pb.SamplingParams, error) {
	if s == nil {
		return nil, nil
	}
	preset, err := enumValue(pb.SamplingParams_Preset_value, "PRESET_", "sampling preset", s.Preset)
	if err != nil {
		return nil, err
	}
	return &pb.SamplingParams{
		Preset:            pb.SamplingParams_Preset(preset),
		MaxTokens:         s.MaxTokens,
		Temperature:       s.Temperature,
		TopK:              s.TopK,
		TopP:              s.TopP,
		RepetitionPenalty: s.RepetitionPenalty,
		Seed:              s.Seed,
	}, nil
}

func priority(name string) (pb.Priority, error) {
	v, err := enumValue(pb.Priority_value, "PRIORITY_", "priority", name)
	return pb.Priority(v), err
}

func generateRequest(findings string, o GenerateOptions) (*pb.GenerateImpressionRequest, error) {
	ctx, err := o.Report.proto()
	if err != nil {
		return nil, err
	}
	sampling, err := o.Sampling.proto()
	if err != nil {
		return nil, err
	}
	prio, err := priority(o.Priority)
	if err != nil {
		return nil, err
	}
	return &pb.GenerateImpressionRequest{
		Findings:        findings,
		Context:         ctx,
		Sampling:        sampling,
		Priority:        prio,
		ClientRequestId: o.ClientRequestID,
	}, nil
}

func scoreRequest(findings, candidate, reference string, o ScoreOptions) (*pb.ScoreRequest, error) {
	ctx, err := o.Report.proto()
	if err != nil {
		return nil, err
	}
	prio, err := priority(o.Priority)
	if err != nil {
		return nil, err
	}
	mode, err := enumValue(pb.RougeMode_value, "ROUGE_MODE_", "ROUGE mode", o.RougeMode)
	if err != nil {
		return nil, err
	}
	seg, err := enumValue(pb.ScoreRequest_Segmenter_value, "SEGMENTER_", "ROUGE segmenter", o.RougeSegmenter)
	if err != nil {
		return nil, err
	}
	return &pb.ScoreRequest{
		Findings:            findings,
		CandidateImpression: candidate,
		ReferenceImpression: reference,
		Context:             ctx,
		Priority:            prio,
		ClientRequestId:     o.ClientRequestID,
		PerTokenLogprobs:    o.PerTokenLogprobs,
		RougeSegmenter:      pb.ScoreRequest_Segmenter(seg),
		RougeMode:           pb.RougeMode(mode),
	}, nil
}
