// Package testserver runs the real chatradio-server as a child process for
// the Go client's tests, and makes throwaway certificates with openssl.
//
// Paths come from the environment that clients/go/run_tests.sh sets:
// CHATRADIO_SERVER (the binary), CHATRADIO_SHARED_DIR (../shared) and
// CHATRADIO_SOURCE_DIR (the repository). Waits are event-driven (the
// server's JSON log lines) with generous limits for a loaded 2-core machine.
package testserver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Wait bounds every wait for the server (start, ready, exit).
const Wait = 120 * time.Second

// Assets are the paths a test needs.
type Assets struct {
	Server, Model, Templates string
}

// Require returns the assets, skipping the test when ../shared is absent
// and failing it when the server binary is.
func Require(t testing.TB) Assets {
	t.Helper()
	source := os.Getenv("CHATRADIO_SOURCE_DIR")
	if source == "" {
		wd, _ := os.Getwd()
		source = filepath.Join(wd, "..", "..", "..") // clients/go/<package>
	}
	shared := os.Getenv("CHATRADIO_SHARED_DIR")
	if shared == "" {
		shared = filepath.Join(source, "..", "shared")
	}
	server := os.Getenv("CHATRADIO_SERVER")
	if server == "" {
		server = filepath.Join(source, "build", "server", "service", "chatradio-server")
	}
	a := Assets{
		Server:    server,
		Model:     filepath.Join(shared, "models", "stories260K"),
		Templates: filepath.Join(source, "tests", "service", "templates_test.json"),
	}
	if _, err := os.Stat(a.Model); err != nil {
		t.Skipf("%s is missing (../shared): skipped", a.Model)
	}
	if info, err := os.Stat(a.Server); err != nil || info.Mode()&0o111 == 0 {
		t.Fatalf("chatradio-server not found at %s (set CHATRADIO_SERVER)", a.Server)
	}
	return a
}

// FreePort is a TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Server is one chatradio-server on 127.0.0.1.
type Server struct {
	Port        int
	Target      string // 127.0.0.1:Port
	MetricsPort int
	cmd         *exec.Cmd
	mu          sync.Mutex
	cond        *sync.Cond
	events      []map[string]any
	lines       []string
	exited      bool
	readerDone  chan struct{}
	stopOnce    sync.Once
}

// Options for Start.
type Options struct {
	Port      int // 0 = any free port
	ExtraArgs []string
}

// Start runs a server and waits until it is ready; t's cleanup stops it.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	a := Require(t)
	s := &Server{MetricsPort: FreePort(t), readerDone: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	args := []string{"--model", a.Model, "--templates", a.Templates, "--host", "127.0.0.1",
		"--port", strconv.Itoa(o.Port), "--metrics-host", "127.0.0.1",
		"--metrics-port", strconv.Itoa(s.MetricsPort), "--threads", "1"}
	s.cmd = exec.Command(a.Server, append(args, o.ExtraArgs...)...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go s.read(stderr)
	t.Cleanup(func() { s.Stop(t) })
	listening := s.WaitEvent(t, "listening")
	s.Port = int(listening["port"].(float64))
	s.Target = fmt.Sprintf("127.0.0.1:%d", s.Port)
	s.WaitEvent(t, "ready")
	return s
}

func (s *Server) read(r io.Reader) {
	defer close(s.readerDone)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var ev map[string]any
		s.mu.Lock()
		s.lines = append(s.lines, line)
		if json.Unmarshal([]byte(line), &ev) == nil {
			s.events = append(s.events, ev)
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.exited = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// WaitEvent waits for the first log line with "event": name and returns it.
func (s *Server) WaitEvent(t testing.TB, name string) map[string]any {
	t.Helper()
	expired := false
	timer := time.AfterFunc(Wait, func() {
		s.mu.Lock()
		expired = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for _, ev := range s.events {
			if ev["event"] == name {
				return ev
			}
		}
		if s.exited || expired {
			t.Fatalf("no %q event from chatradio-server; stderr:\n%s", name, strings.Join(s.lines, "\n"))
		}
		s.cond.Wait()
	}
}

var requestsLine = regexp.MustCompile(`^chatradio_requests_total\{([^}]*)\} (\S+)$`)

// Requests is chatradio_requests_total{rpc, code} from the metrics endpoint
// (0 when absent).
func (s *Server) Requests(t testing.TB, rpc, code string) float64 {
	t.Helper()
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", s.MetricsPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		m := requestsLine.FindStringSubmatch(line)
		if m == nil || !strings.Contains(m[1], `rpc="`+rpc+`"`) || !strings.Contains(m[1], `code="`+code+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += v
	}
	return total
}

// Signal sends sig to the server.
func (s *Server) Signal(sig syscall.Signal) {
	_ = s.cmd.Process.Signal(sig)
}

// Kill ends the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
}

// Stop drains the server (SIGTERM) and waits for it to exit (SIGKILL after
// Wait); safe to call more than once.
func (s *Server) Stop(t testing.TB) {
	s.stopOnce.Do(func() {
		s.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			_ = s.cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(Wait):
			_ = s.cmd.Process.Kill()
			<-done
			t.Errorf("chatradio-server did not exit within %v of SIGTERM", Wait)
		}
		<-s.readerDone
	})
}

// PKI is a throwaway CA with a server certificate for localhost and
// 127.0.0.1 and a client certificate (EC P-256: fast), made with openssl.
type PKI struct{ Dir string }

// NewPKI makes the certificates in a temporary folder; skips without openssl.
func NewPKI(t testing.TB) PKI {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not found: TLS test skipped")
	}
	p := PKI{Dir: t.TempDir()}
	write := func(name, text string) {
		if err := os.WriteFile(p.Path(name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
	write("client.ext", "extendedKeyUsage=clientAuth\n")
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	join := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	sign := func(name string) []string {
		return []string{"x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
			"-out", name + ".pem", "-days", "2", "-extfile", name + ".ext"}
	}
	for _, args := range [][]string{
		join([]string{"req", "-x509"}, ec, []string{"-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA"}),
		join([]string{"req"}, ec, []string{"-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"}),
		sign("server"),
		join([]string{"req"}, ec, []string{"-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=test client"}),
		sign("client"),
	} {
		cmd := exec.Command("openssl", args...)
		cmd.Dir = p.Dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return p
}

// Path is the path of a file of the PKI (ca.pem, server.pem, client.key...).
func (p PKI) Path(name string) string { return filepath.Join(p.Dir, name) }
