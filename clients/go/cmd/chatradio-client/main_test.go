package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"chatradio/clients/go/client"
	"chatradio/clients/go/internal/testserver"
)

const findings = "The lungs are clear. No pleural effusion."

// cli runs the command in-process with `stdin`; exit code, stdout, stderr.
func cli(stdin string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// plainEnv points the command at `target` in plaintext without a token,
// whatever the environment of the test run says.
func plainEnv(t *testing.T, target string) {
	t.Setenv("CHATRADIO_TARGET", target)
	for _, k := range []string{"CHATRADIO_TOKEN", "CHATRADIO_TOKEN_FILE", "CHATRADIO_TLS", "CHATRADIO_TLS_CA",
		"CHATRADIO_TLS_CERT", "CHATRADIO_TLS_KEY", "CHATRADIO_TLS_SERVER_NAME"} {
		t.Setenv(k, "")
	}
}

func TestCLI(t *testing.T) {
	srv := testserver.Start(t, testserver.Options{})
	plainEnv(t, srv.Target)
	c, err := client.New(srv.Target)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want, err := c.Impression(context.Background(), findings, client.GenerateOptions{Sampling: client.Greedy(24)})
	if err != nil {
		t.Fatal(err)
	}

	// Flags before or after the findings.
	for _, args := range [][]string{{"impression", findings, "--greedy", "--max-tokens", "24"},
		{"impression", "--greedy", "--max-tokens=24", findings}} {
		code, out, errOut := cli("", args...)
		if code != 0 || out != want.Impression+"\n" {
			t.Fatalf("%q: exit %d, stdout %q, stderr %q; want %q", args, code, out, errOut, want.Impression)
		}
	}

	code, out, errOut := cli(findings, "stream", "--file", "-", "--greedy", "--max-tokens", "24", "--json")
	if code != 0 {
		t.Fatalf("stream: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var text strings.Builder
	for _, line := range lines[:len(lines)-1] {
		var ev struct{ Delta string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Delta == "" {
			t.Fatalf("delta line %q: %v", line, err)
		}
		text.WriteString(ev.Delta)
	}
	var final struct {
		Final struct {
			Impression   string
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &final); err != nil {
		t.Fatalf("final line %q: %v", lines[len(lines)-1], err)
	}
	if text.String() != final.Final.Impression || final.Final.Impression != want.Impression || final.Final.FinishReason == "" {
		t.Fatalf("stream: deltas %q, final %+v, want %q", text.String(), final.Final, want.Impression)
	}

	code, out, errOut = cli(findings, "stream", "--greedy", "--max-tokens", "24")
	if code != 0 || out != want.Impression+"\n" {
		t.Fatalf("stream text: exit %d, %q, %s", code, out, errOut)
	}

	file := filepath.Join(t.TempDir(), "findings.txt")
	if err := os.WriteFile(file, []byte(findings), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = cli("", "score", "--file", file, "--candidate", "No acute disease.", "--reference", "No acute disease.", "--json")
	var score struct {
		Rouge struct {
			RougeL struct{ F1 float64 } `json:"rouge_l"`
		}
		RougeMode string `json:"rouge_mode"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &score) != nil || score.Rouge.RougeL.F1 < 0.999 || score.RougeMode == "" {
		t.Fatalf("score: exit %d, %q, %s", code, out, errOut)
	}
	code, out, _ = cli("", "score", findings, "--candidate", "No acute disease.", "--reference", "No acute disease.", "--rouge-mode", "lin")
	if code != 0 || !strings.Contains(out, "ROUGE (ROUGE_MODE_LIN") || !strings.Contains(out, "rouge1   P 1.0000 R 1.0000 F 1.0000") {
		t.Fatalf("score text: exit %d, %q", code, out)
	}

	if code, out, _ := cli("", "health"); code != 0 || out != "SERVING\n" {
		t.Fatalf("health: exit %d, %q", code, out)
	}
	if code, out, _ := cli("", "health", "--json", "--service", ""); code != 0 || out != "{\"status\":\"SERVING\"}\n" {
		t.Fatalf("health --json: exit %d, %q", code, out)
	}
	if code, _, errOut := cli("", "health", "--service", "no.such.Service"); code != 1 || !strings.Contains(errOut, "NOT_FOUND") {
		t.Fatalf("health of an unknown service: exit %d, %s", code, errOut)
	}

	for _, tc := range []struct {
		args  []string
		code  int
		inErr string
	}{
		{[]string{"impression", "", "--greedy"}, 1, "INVALID_ARGUMENT: findings is empty"},
		{[]string{"impression", findings, "--modality", "xray-vision"}, 2, "unknown modality"},
		{[]string{"impression", findings, "--max-tokens", "-3"}, 2, "max-tokens"},
		{[]string{"impression", findings, "extra"}, 2, "unexpected argument"},
		{[]string{"impression", findings, "--file", file}, 2, "not both"},
		{[]string{"score", findings}, 2, "--candidate"},
		{[]string{"transcribe"}, 2, "unknown command"},
		{nil, 2, "usage"},
	} {
		code, _, errOut := cli("", tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.inErr) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.inErr)
		}
	}
}

func TestCLIHealthNotServing(t *testing.T) {
	// A draining server answers health with NOT_SERVING for --drain-grace
	// seconds (generous: the check takes well under a second).
	srv := testserver.Start(t, testserver.Options{ExtraArgs: []string{"--drain-grace", "60"}})
	srv.Signal(syscall.SIGTERM)
	srv.WaitEvent(t, "draining")
	plainEnv(t, srv.Target)
	code, out, errOut := cli("", "health")
	srv.Kill() // no need to wait out the grace period
	if code != exitNotServing || out != "NOT_SERVING\n" {
		t.Fatalf("health of a draining server: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
