// Command grpctest-plugin-go is the Go reference for the Rust example `grpctest_plugin`: a
// go-plugin v1.8.0 gRPC plugin serving grpctest.Test under the name `test`.
//
// Usage: grpctest-plugin-go [MODE] [ARGS...]
//
//	test-grpc       (default) protocol version 1
//	test-mtls       protocol version 2 only (for AutoMTLS hosts)
//	test-versioned  versioned plugin sets {2, 3}
//	stderr          as test-grpc; right after the handshake writes six raw lines to stderr
//	stdin           as test-grpc; after the handshake reads 5 bytes from stdin, exits 0 on "hello", else 1
//	cleanup PATH    as test-grpc; once serving ends writes "foo" to PATH and exits 0
//	test-grpc-tls   as test-grpc over pre-shared TLS (ServeConfig.TLSProvider): upstream's
//	                helperTLSProvider built from the PEMs in GRPCTEST_TLS_{CERT,KEY,CA}_PEM
//
// The modes mirror upstream's TestHelperProcess (plugin_test.go) but every mode really serves.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/goplugin-rs/compat-tests/internal/testplugin"
	"github.com/hashicorp/go-plugin"
)

// stderrLines are written by the `stderr` mode, in this order.
var stderrLines = []string{
	"HELLO",
	"WORLD",
	`["HELLO"]`,
	"12345",
	`{"a":1}`,
	"[WARN] test line 98765",
}

func main() {
	mode := "test-grpc"
	args := os.Args[1:]
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}

	config := &plugin.ServeConfig{
		HandshakeConfig: testplugin.Handshake,
		Plugins:         testplugin.PluginSet(),
		GRPCServer:      plugin.DefaultGRPCServer,
	}

	switch mode {
	case "test-grpc":
	case "test-mtls":
		config.HandshakeConfig.ProtocolVersion = 2
	case "test-grpc-tls":
		config.TLSProvider = preSharedTLS
	case "test-versioned":
		config.HandshakeConfig = testplugin.VersionedHandshake
		config.Plugins = nil
		config.VersionedPlugins = map[int]plugin.PluginSet{
			2: testplugin.PluginSet(),
			3: testplugin.PluginSet(),
		}
	case "stderr":
		afterHandshake(func(stderr *os.File) {
			for _, line := range stderrLines {
				_, _ = stderr.WriteString(line + "\n")
			}
		})
	case "stdin":
		afterHandshake(func(*os.File) {
			buf := make([]byte, 5)
			if _, err := io.ReadFull(os.Stdin, buf); err != nil || string(buf) != "hello" {
				os.Exit(1)
			}
			os.Exit(0)
		})
	case "cleanup":
		if len(args) != 1 {
			fmt.Fprintln(os.Stderr, "usage: grpctest-plugin-go cleanup PATH")
			os.Exit(2)
		}
		plugin.Serve(config)
		if err := os.WriteFile(args[0], []byte("foo"), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "cleanup: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown mode: %q\n", mode)
		os.Exit(2)
	}

	plugin.Serve(config)
	os.Exit(0)
}

// afterHandshake runs fn, with the process's real stderr, as soon as plugin.Serve has written
// the handshake line. plugin.Serve prints that line through os.Stdout, so os.Stdout is swapped
// for a pipe whose first line is relayed to the real stdout before fn runs. (Serve replaces
// os.Stdout again after the handshake; the relay keeps forwarding anything else it receives.)
func afterHandshake(fn func(stderr *os.File)) {
	realStdout, realStderr := os.Stdout, os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipe: %v\n", err)
		os.Exit(1)
	}
	os.Stdout = w
	go func() {
		br := bufio.NewReader(r)
		line, err := br.ReadBytes('\n')
		_, _ = realStdout.Write(line)
		if err != nil {
			return
		}
		fn(realStderr)
		_, _ = io.Copy(realStdout, br)
	}()
}

// preSharedTLS is upstream's helperTLSProvider (plugin_test.go) over the PEMs in the environment:
// serve the certificate, verify a client certificate against the CA if one is given, and present
// the same certificate when dialing the host's brokered servers.
func preSharedTLS() (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(os.Getenv("GRPCTEST_TLS_CERT_PEM")), []byte(os.Getenv("GRPCTEST_TLS_KEY_PEM")))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(os.Getenv("GRPCTEST_TLS_CA_PEM"))) {
		return nil, errors.New("GRPCTEST_TLS_CA_PEM holds no certificate")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ClientCAs:    roots,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ServerName:   "127.0.0.1",
	}, nil
}
