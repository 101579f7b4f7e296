// Command chatradio-client calls a chatradio server from the command line.
//
//	chatradio-client impression "The lungs are clear." --language en
//	chatradio-client stream --file findings.txt --greedy --max-tokens 64
//	echo "findings" | chatradio-client score --candidate "No acute disease." --reference "Normal."
//	chatradio-client health --target host:50051
//
// Findings come from the argument, --file FILE, or stdin. --json prints the
// response as JSON (stream: one JSON line per event). Exit codes: 0 OK, 1 the
// call failed (the gRPC code and message go to stderr), 2 bad usage; health
// exits 3 when the server is reachable but not SERVING.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "chatradio/clients/go/chatradiov1"
	"chatradio/clients/go/client"
)

const (
	exitFailed     = 1
	exitUsage      = 2
	exitNotServing = 3
)

const usage = `usage: chatradio-client impression|stream|score|health [FINDINGS] [flags]

  impression  generate the impression for the findings
  stream      the same, printing the text as it is generated
  score       log-probability of a candidate impression, and ROUGE against a reference
  health      the server's health (exit 0 when SERVING, 3 otherwise)

Findings come from the argument, --file FILE ('-' = stdin), or stdin.
Run 'chatradio-client COMMAND -h' for the flags of a command.
Exit codes: 0 OK, 1 the call failed, 2 bad usage, 3 health not SERVING.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	cmd := &command{name: args[0], stdin: stdin, stdout: stdout}
	code, err := cmd.run(args[1:])
	var callErr *client.Error
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &callErr):
		fmt.Fprintf(stderr, "chatradio-client: %v\n", err)
		return exitFailed
	case err != nil: // bad flags, arguments, names or files
		fmt.Fprintf(stderr, "chatradio-client: %v\n", err)
		return exitUsage
	}
	return code
}

// command holds one invocation's flags.
type command struct {
	name          string
	stdin         io.Reader
	stdout        io.Writer
	fs            *flag.FlagSet
	targets       targetList
	token         optString
	tls           bool
	tlsCfg        client.TLS
	timeout       float64
	jsonOut       bool
	findingsFile  string
	requestID     string
	report        client.Report
	priority      string
	sampling      client.Sampling
	greedy        bool
	candidate     optString
	candidateFile string
	reference     optString
	referenceFile string
	perToken      bool
	rougeMode     string
	rougeSeg      string
	service       string
}

func (c *command) flags() error {
	fs := flag.NewFlagSet("chatradio-client "+c.name, flag.ContinueOnError)
	c.fs = fs
	fs.Var(&c.targets, "target", "server HOST:PORT; repeat (or comma-separate) to balance over several (default $CHATRADIO_TARGET or localhost:50051)")
	fs.Var(&c.token, "token", "bearer token (default $CHATRADIO_TOKEN or the file $CHATRADIO_TOKEN_FILE)")
	fs.BoolVar(&c.tls, "tls", false, "use TLS with the system's roots")
	fs.StringVar(&c.tlsCfg.CA, "tls-ca", "", "PEM roots to trust (implies TLS; default $CHATRADIO_TLS_CA)")
	fs.StringVar(&c.tlsCfg.Cert, "tls-cert", "", "client certificate for mutual TLS ($CHATRADIO_TLS_CERT)")
	fs.StringVar(&c.tlsCfg.Key, "tls-key", "", "its private key ($CHATRADIO_TLS_KEY)")
	fs.StringVar(&c.tlsCfg.ServerName, "tls-server-name", "", "name to verify in the server's certificate")
	fs.Float64Var(&c.timeout, "timeout", client.DefaultTimeout.Seconds(), "deadline per call in seconds, retries included")
	fs.BoolVar(&c.jsonOut, "json", false, "print the response as JSON")
	switch c.name {
	case "health":
		fs.StringVar(&c.service, "service", client.Service, "service name ('' = the whole server)")
		return nil
	case "impression", "stream", "score":
	default:
		return fmt.Errorf("unknown command %q (impression, stream, score, health)", c.name)
	}
	fs.StringVar(&c.findingsFile, "file", "", "read the findings from FILE ('-' = stdin)")
	fs.StringVar(&c.requestID, "request-id", "", "client_request_id, echoed back and logged")
	fs.StringVar(&c.report.Language, "language", "", "zh, en or auto (default: detected)")
	fs.StringVar(&c.report.Modality, "modality", "", "ct, mr, xr, us, pet-ct, other")
	fs.StringVar(&c.report.BodySystem, "body-system", "", "chest, abdomen, musculoskeletal, head, maxillofacial-neck, other")
	fs.StringVar(&c.report.Institution, "institution", "", "site id (logs and metrics only)")
	fs.StringVar(&c.report.Template, "template", "", "template id (default: the server's for language and body system)")
	fs.StringVar(&c.priority, "priority", "", "routine or stat")
	if c.name == "score" {
		fs.Var(&c.candidate, "candidate", "impression to score")
		fs.StringVar(&c.candidateFile, "candidate-file", "", "read the candidate from FILE")
		fs.Var(&c.reference, "reference", "reference impression for ROUGE")
		fs.StringVar(&c.referenceFile, "reference-file", "", "read the reference from FILE")
		fs.BoolVar(&c.perToken, "per-token", false, "log-probability of every token")
		fs.StringVar(&c.rougeMode, "rouge-mode", "", "chinese-compat (rouge_chinese 1.0.3; the server's default) or lin (rouge-score); docs/rouge.md")
		fs.StringVar(&c.rougeSeg, "rouge-segmenter", "", "char, jieba, jieba-no-hmm or english (default: the mode's)")
		return nil
	}
	s := &c.sampling
	fs.StringVar(&s.Preset, "preset", "", "paper (temperature 1, top-k 50, top-p 1, max 512) or greedy (default: the server's)")
	fs.BoolVar(&c.greedy, "greedy", false, "same as --preset greedy")
	fs.Var(optUint32{&s.MaxTokens}, "max-tokens", "most tokens to generate")
	fs.Var(optFloat32{&s.Temperature}, "temperature", "0 = greedy")
	fs.Var(optUint32{&s.TopK}, "top-k", "0 = off")
	fs.Var(optFloat32{&s.TopP}, "top-p", "in (0, 1]")
	fs.Var(optFloat32{&s.RepetitionPenalty}, "repetition-penalty", "> 0; 1 = off")
	fs.Var(optUint64{&s.Seed}, "seed", "same seed, same output")
	return nil
}

// parse parses flags and positional arguments in any order (the flag
// package stops at the first positional one).
func (c *command) parse(args []string) ([]string, error) {
	var positional []string
	for {
		if err := c.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, err
		}
		if c.fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, c.fs.Arg(0))
		args = c.fs.Args()[1:]
	}
}

func (c *command) run(args []string) (int, error) {
	if err := c.flags(); err != nil {
		return 0, err
	}
	c.fs.SetOutput(io.Discard)
	positional, err := c.parse(args)
	if errors.Is(err, flag.ErrHelp) {
		c.fs.SetOutput(c.stdout)
		if c.name == "health" {
			fmt.Fprintln(c.stdout, "usage: chatradio-client health [flags]")
		} else {
			fmt.Fprintf(c.stdout, "usage: chatradio-client %s [FINDINGS] [flags]\n", c.name)
		}
		c.fs.PrintDefaults()
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	if len(positional) > 1 || (c.name == "health" && len(positional) > 0) {
		return 0, fmt.Errorf("unexpected argument %q (quote the findings as one argument)", positional[len(positional)-1])
	}
	cl, err := c.connect()
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	ctx := context.Background()
	if c.name == "health" {
		return c.health(ctx, cl)
	}
	var arg *string
	if len(positional) == 1 {
		arg = &positional[0]
	}
	findings, err := c.readText(arg, c.findingsFile, "findings")
	if err != nil {
		return 0, err
	}
	if c.name == "score" {
		return 0, c.score(ctx, cl, findings)
	}
	if c.greedy {
		c.sampling.Preset = "greedy"
	}
	o := client.GenerateOptions{Report: c.report, Priority: c.priority, ClientRequestID: c.requestID, Sampling: &c.sampling}
	if c.name == "impression" {
		r, err := cl.Impression(ctx, findings, o)
		if err != nil {
			return 0, err
		}
		if c.jsonOut {
			return 0, c.printJSON("", r)
		}
		_, err = fmt.Fprintln(c.stdout, r.Impression)
		return 0, err
	}
	return 0, c.stream(ctx, cl, findings, o)
}

func (c *command) connect() (*client.Client, error) {
	opts := []client.Option{client.WithTimeout(time.Duration(c.timeout * float64(time.Second)))}
	if c.token.set {
		opts = append(opts, client.WithToken(c.token.value))
	}
	if c.tls || c.tlsCfg != (client.TLS{}) {
		// Flags override the environment one setting at a time.
		t := client.TLSFromEnv()
		if t == nil {
			t = &client.TLS{}
		}
		for _, f := range []struct{ dst, flag *string }{{&t.CA, &c.tlsCfg.CA}, {&t.Cert, &c.tlsCfg.Cert},
			{&t.Key, &c.tlsCfg.Key}, {&t.ServerName, &c.tlsCfg.ServerName}} {
			if *f.flag != "" {
				*f.dst = *f.flag
			}
		}
		opts = append(opts, client.WithTLS(t))
	}
	if c.name == "health" {
		// Report a server that is up but not SERVING instead of skipping it.
		opts = append(opts, client.WithoutHealthCheck(), client.WithRetry(client.NoRetry))
	}
	return client.New(strings.Join(c.targets, ","), opts...)
}

func (c *command) health(ctx context.Context, cl *client.Client) (int, error) {
	status, err := cl.Health(ctx, c.service)
	if err != nil {
		return 0, err
	}
	if c.jsonOut {
		err = c.printJSONValue("status", status)
	} else {
		_, err = fmt.Fprintln(c.stdout, status)
	}
	if status != "SERVING" {
		return exitNotServing, err
	}
	return 0, err
}

func (c *command) score(ctx context.Context, cl *client.Client, findings string) error {
	if !c.candidate.set && c.candidateFile == "" {
		return errors.New("score needs the candidate impression: --candidate TEXT or --candidate-file FILE")
	}
	var candArg, refArg *string
	if c.candidate.set {
		candArg = &c.candidate.value
	}
	candidate, err := c.readText(candArg, c.candidateFile, "candidate")
	if err != nil {
		return err
	}
	reference := ""
	if c.reference.set || c.referenceFile != "" {
		if c.reference.set {
			refArg = &c.reference.value
		}
		if reference, err = c.readText(refArg, c.referenceFile, "reference"); err != nil {
			return err
		}
	}
	r, err := cl.Score(ctx, findings, candidate, reference, client.ScoreOptions{
		Report: c.report, Priority: c.priority, ClientRequestID: c.requestID,
		PerTokenLogprobs: c.perToken, RougeMode: c.rougeMode, RougeSegmenter: c.rougeSeg,
	})
	if err != nil {
		return err
	}
	if c.jsonOut {
		return c.printJSON("", r)
	}
	fmt.Fprintf(c.stdout, "logprob %.4f (mean %.4f, perplexity %.3f, %d tokens)\n",
		r.TotalLogprob, r.MeanLogprob, r.Perplexity, r.CandidateTokens)
	if r.Rouge != nil {
		fmt.Fprintf(c.stdout, "ROUGE (%s, %s)\n", r.RougeMode, r.RougeSegmenter)
		for _, s := range []struct {
			name  string
			score *pb.RougeScore
		}{{"rouge1", r.Rouge.Rouge1}, {"rouge2", r.Rouge.Rouge2}, {"rouge_l", r.Rouge.RougeL}} {
			fmt.Fprintf(c.stdout, "%-8s P %.4f R %.4f F %.4f\n", s.name, s.score.GetPrecision(), s.score.GetRecall(), s.score.GetF1())
		}
	}
	for _, t := range r.TokenLogprobs {
		fmt.Fprintf(c.stdout, "%8.4f %6d %s\n", t.Logprob, t.TokenId, t.Token)
	}
	return nil
}

func (c *command) stream(ctx context.Context, cl *client.Client, findings string, o client.GenerateOptions) error {
	st := cl.StreamImpression(ctx, findings, o)
	defer st.Close()
	for st.Next() {
		if c.jsonOut {
			if err := c.printJSONValue("delta", st.Delta()); err != nil {
				return err
			}
		} else if _, err := io.WriteString(c.stdout, st.Delta()); err != nil {
			return err
		}
	}
	if err := st.Err(); err != nil {
		if !c.jsonOut {
			fmt.Fprintln(c.stdout)
		}
		return err
	}
	if c.jsonOut {
		return c.printJSON("final", st.Final())
	}
	_, err := fmt.Fprintln(c.stdout)
	return err
}

// printJSON prints `m` as one line of JSON with the proto field names, as
// {"<key>": m} when key is not "".
func (c *command) printJSON(key string, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	if key != "" {
		b = []byte(fmt.Sprintf("{%q: %s}", key, b))
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

// printJSONValue prints {"<key>": value} as one line.
func (c *command) printJSONValue(key string, value string) error {
	b, err := json.Marshal(map[string]string{key: value})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", b)
	return err
}

// readText is `arg`, or the contents of `path` ("-" = stdin), or stdin when
// it is not a terminal.
func (c *command) readText(arg *string, path, what string) (string, error) {
	switch {
	case arg != nil && path != "":
		return "", fmt.Errorf("give the %s as an argument or with a file, not both", what)
	case arg != nil:
		return *arg, nil
	case path != "" && path != "-":
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		return string(b), nil
	}
	if f, ok := c.stdin.(*os.File); ok && path == "" {
		if info, err := f.Stat(); err == nil && info.Mode()&os.ModeCharDevice != 0 {
			return "", fmt.Errorf("no %s: give it as an argument, with --file, or on stdin", what)
		}
	}
	b, err := io.ReadAll(c.stdin)
	if err != nil {
		return "", fmt.Errorf("%s from stdin: %w", what, err)
	}
	return string(b), nil
}
