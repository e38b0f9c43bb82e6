package gohost

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// cookieMismatchText is what a go-plugin plugin prints on stderr when started without the magic
// cookie (spec §2.3).
const cookieMismatchText = "This binary is a plugin. These are not meant to be executed directly.\n" +
	"Please execute the program that consumes these plugins, which will\n" +
	"load any plugins automatically\n"

// cleanEnv is the test process's environment without anything go-plugin would interpret.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TEST_MAGIC_COOKIE=") || strings.HasPrefix(kv, "PLUGIN_") ||
			strings.HasPrefix(kv, "GOPLUGIN_NETWORK=") || strings.HasPrefix(kv, "TMPDIR=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// TestCookieMismatch: spec §19 item 27 and §2.3. Started directly, without the magic cookie or
// with a wrong value, the plugin prints exactly the three-line notice on stderr, nothing on
// stdout, and exits 1.
//
// No upstream test exists (the behaviour is plugin.Serve's; spec §19 item 27 names none).
func TestCookieMismatch(t *testing.T) {
	cases := []struct {
		name string
		env  []string
	}{
		{"absent", nil},
		{"wrong-value", []string{"TEST_MAGIC_COOKIE=nope"}},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		path := im.bin(t, im.grpctest)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, path)
				cmd.Env = append(cleanEnv(), c.env...)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var exitErr *exec.ExitError
				if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
					t.Errorf("exit: %v, want exit status 1", err)
				}
				if stdout.Len() != 0 {
					t.Errorf("stdout = %q, want nothing", stdout.String())
				}
				if stderr.String() != cookieMismatchText {
					t.Errorf("stderr = %q\nwant     %q", stderr.String(), cookieMismatchText)
				}
			})
		}
	})
}

// rawPlugin is a plugin process started by the test itself (no go-plugin host), to look at the
// handshake line directly.
type rawPlugin struct {
	cmd    *exec.Cmd
	line   string
	stderr *syncBuffer
}

// startRaw starts path with the cookie plus env and returns its first stdout line.
func startRaw(t *testing.T, path string, args, env []string) *rawPlugin {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(append(cleanEnv(), "TEST_MAGIC_COOKIE=test", "TMPDIR="+shortTempDir(t)), env...)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lineCh := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lineCh <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-lineCh:
		if !strings.HasSuffix(line, "\n") {
			t.Fatalf("no complete handshake line on stdout: %q (stderr: %q)", line, stderr.String())
		}
		return &rawPlugin{cmd: cmd, line: strings.TrimSuffix(line, "\n"), stderr: stderr}
	case <-time.After(10 * time.Second):
		t.Fatalf("no handshake line within 10 s (stderr: %q)", stderr.String())
	}
	return nil
}

var (
	plainLine = regexp.MustCompile(`^1\|(\d+)\|unix\|(/[^|]+)\|grpc\|$`)
	muxLine   = regexp.MustCompile(`^1\|(\d+)\|unix\|(/[^|]+)\|grpc\|\|true$`)
	tlsLine   = regexp.MustCompile(`^1\|(\d+)\|unix\|(/[^|]+)\|grpc\|([A-Za-z0-9+/]{51,})$`)
)

// TestHandshakeLine: spec §5 and §3. The exact shape of the line a Go plugin prints on Linux:
// `1|1|unix|/path|grpc|` (empty field 6), `...|grpc||true` when PLUGIN_MULTIPLEX_GRPC is set,
// and version choice from PLUGIN_PROTOCOL_VERSIONS (highest common; lowest when absent or no
// match; invalid entries skipped).
//
// No single upstream twin: the shapes are what go-plugin's Serve prints (server.go) and what the
// helper modes of TestHelperProcess (plugin_test.go) imitate.
func TestHandshakeLine(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		env     []string
		re      *regexp.Regexp
		version string
	}{
		{"plain", nil, []string{"PLUGIN_PROTOCOL_VERSIONS=1"}, plainLine, "1"},
		{"mux", nil, []string{"PLUGIN_PROTOCOL_VERSIONS=1", "PLUGIN_MULTIPLEX_GRPC=true"}, muxLine, "1"},
		{"versioned/3,2", []string{"test-versioned"}, []string{"PLUGIN_PROTOCOL_VERSIONS=3,2"}, plainLine, "3"},
		{"versioned/2,4", []string{"test-versioned"}, []string{"PLUGIN_PROTOCOL_VERSIONS=2,4"}, plainLine, "2"},
		{"versioned/absent", []string{"test-versioned"}, nil, plainLine, "2"},
		{"versioned/no-match", []string{"test-versioned"}, []string{"PLUGIN_PROTOCOL_VERSIONS=1,7"}, plainLine, "2"},
		{"versioned/invalid-entry", []string{"test-versioned"}, []string{"PLUGIN_PROTOCOL_VERSIONS=x,3"}, plainLine, "3"},
	}
	eachImpl(t, true, func(t *testing.T, im impl) {
		path := im.bin(t, im.grpctest)
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				p := startRaw(t, path, c.args, c.env)
				m := c.re.FindStringSubmatch(p.line)
				if m == nil {
					t.Fatalf("handshake line %q does not match %s", p.line, c.re)
				}
				if m[1] != c.version {
					t.Errorf("handshake version %s, want %s (line %q)", m[1], c.version, p.line)
				}
				if info, err := os.Lstat(m[2]); err != nil || info.Mode()&os.ModeSocket == 0 {
					t.Errorf("handshake address %s is not a socket (%v)", m[2], err)
				}
			})
		}
	})
}

// TestHealthStatus: spec §12 and §7.2. The health service reports SERVING for "plugin" (what
// ClientProtocol.Ping checks) and for the empty service name, like a Go plugin; an unknown
// service is NOT_FOUND.
//
// No upstream twin (go-plugin's Ping ignores the status, issue #341); guards the stricter hosts.
func TestHealthStatus(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		p := startRaw(t, im.bin(t, im.grpctest), nil, []string{"PLUGIN_PROTOCOL_VERSIONS=1"})
		m := plainLine.FindStringSubmatch(p.line)
		if m == nil {
			t.Fatalf("handshake line %q", p.line)
		}
		conn, err := grpc.Dial("unix://"+m[2], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close() }()
		hc := healthpb.NewHealthClient(conn)
		for _, svc := range []string{"plugin", ""} {
			resp, err := hc.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Errorf("Check(%q): %v", svc, err)
				continue
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Check(%q) = %v, want SERVING", svc, resp.Status)
			}
		}
		if _, err := hc.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "no-such-service"}); err == nil {
			t.Errorf("Check(\"no-such-service\") succeeded, want NOT_FOUND")
		}
	})
}

// hostCert generates a certificate like go-plugin's host side (P-521, self-signed, CA, SAN
// localhost, both EKUs).
func hostCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"HashiCorp"}},
		DNSNames:              []string{"localhost"},
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		NotBefore:             time.Now().Add(-30 * time.Second),
		NotAfter:              time.Now().Add(262980 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestAutoMTLSHandshake: spec §6. With PLUGIN_CLIENT_CERT set, field 6 is the plugin's
// certificate as unpadded standard base64 DER, following go-plugin's template (P-521, ECDSA-SHA512,
// CN=localhost O=HashiCorp, DNS SAN localhost, both EKUs, CA, ~30 years). The socket speaks TLS
// 1.3 and 1.2 with ALPN h2 to a client presenting the host certificate, and refuses a client
// without one.
//
// No upstream twin: go-plugin's TestClient_mtlsClient covers it only through the host library
// (whose pinned grpc-go v1.61 does not yet enforce ALPN; newer hosts do, spec P8).
func TestAutoMTLSHandshake(t *testing.T) {
	eachImpl(t, true, func(t *testing.T, im impl) {
		cert, certPEM := hostCert(t)
		p := startRaw(t, im.bin(t, im.grpctest), []string{"test-mtls"},
			[]string{"PLUGIN_PROTOCOL_VERSIONS=2", "PLUGIN_CLIENT_CERT=" + string(certPEM)})
		m := tlsLine.FindStringSubmatch(p.line)
		if m == nil {
			t.Fatalf("handshake line %q does not match %s", p.line, tlsLine)
		}
		if m[1] != "2" {
			t.Errorf("version %s, want 2", m[1])
		}
		der, err := base64.RawStdEncoding.DecodeString(m[3])
		if err != nil {
			t.Fatalf("field 6 is not unpadded standard base64: %v", err)
		}
		pc, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("field 6 is not a DER certificate: %v", err)
		}
		checkPluginCert(t, pc)

		pool := x509.NewCertPool()
		pool.AddCert(pc)
		for _, v := range []struct {
			name string
			max  uint16
		}{{"tls1.3", tls.VersionTLS13}, {"tls1.2", tls.VersionTLS12}} {
			t.Run(v.name, func(t *testing.T) {
				conn, err := tls.Dial("unix", m[2], &tls.Config{
					Certificates: []tls.Certificate{cert},
					RootCAs:      pool,
					ServerName:   "localhost",
					NextProtos:   []string{"h2"},
					MaxVersion:   v.max,
				})
				if err != nil {
					t.Fatalf("TLS handshake: %v", err)
				}
				defer func() { _ = conn.Close() }()
				st := conn.ConnectionState()
				if st.NegotiatedProtocol != "h2" {
					t.Errorf("ALPN = %q, want h2", st.NegotiatedProtocol)
				}
				if st.Version != v.max {
					t.Errorf("TLS version %#x, want %#x", st.Version, v.max)
				}
			})
		}
		t.Run("no-client-cert", func(t *testing.T) {
			conn, err := tls.Dial("unix", m[2], &tls.Config{
				RootCAs:    pool,
				ServerName: "localhost",
				NextProtos: []string{"h2"},
			})
			if err != nil {
				return // refused during the handshake (TLS 1.2 style)
			}
			defer func() { _ = conn.Close() }()
			// TLS 1.3: the client finishes first; the refusal arrives as an alert on read.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
			_, err = conn.Read(make([]byte, 64))
			var ne net.Error
			if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
				t.Errorf("connection without a client certificate was not refused (read: %v)", err)
			}
		})
	})
}

func checkPluginCert(t *testing.T, c *x509.Certificate) {
	t.Helper()
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P521() {
		t.Errorf("plugin cert key %T, want ECDSA P-521", c.PublicKey)
	}
	if c.SignatureAlgorithm != x509.ECDSAWithSHA512 {
		t.Errorf("plugin cert signature %v, want ECDSA-SHA512", c.SignatureAlgorithm)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("plugin cert is not self-signed: %v", err)
	}
	if c.Subject.CommonName != "localhost" || !reflect.DeepEqual(c.Subject.Organization, []string{"HashiCorp"}) {
		t.Errorf("plugin cert subject %q, want CN=localhost,O=HashiCorp", c.Subject)
	}
	if !reflect.DeepEqual(c.DNSNames, []string{"localhost"}) || len(c.IPAddresses) != 0 {
		t.Errorf("plugin cert SANs DNS %v IP %v, want DNS [localhost] only", c.DNSNames, c.IPAddresses)
	}
	eku := map[x509.ExtKeyUsage]bool{}
	for _, u := range c.ExtKeyUsage {
		eku[u] = true
	}
	if !eku[x509.ExtKeyUsageServerAuth] || !eku[x509.ExtKeyUsageClientAuth] {
		t.Errorf("plugin cert EKUs %v, want serverAuth and clientAuth", c.ExtKeyUsage)
	}
	wantKU := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement | x509.KeyUsageCertSign
	if c.KeyUsage != wantKU {
		t.Errorf("plugin cert key usage %#b, want %#b", c.KeyUsage, wantKU)
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		t.Errorf("plugin cert basic constraints valid=%v CA=%v, want CA:TRUE", c.BasicConstraintsValid, c.IsCA)
	}
	now := time.Now()
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		t.Errorf("plugin cert not valid now: %v .. %v", c.NotBefore, c.NotAfter)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 262900*time.Hour || life > 263000*time.Hour {
		t.Errorf("plugin cert lifetime %v, want about 262980h (30 years)", life)
	}
	if c.SerialNumber.Sign() <= 0 {
		t.Errorf("plugin cert serial %v, want positive", c.SerialNumber)
	}
}
