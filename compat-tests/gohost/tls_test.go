package gohost

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// testCA is a throwaway CA and a certificate it signed for 127.0.0.1, PEM, the shape of
// go-plugin's TestClusterCACert / TestClusterServerCert / TestClusterServerKey.
type testCA struct {
	caPEM, certPEM, keyPEM string
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "goplugin compat test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(kind string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))
	}
	return testCA{enc("CERTIFICATE", caDER), enc("CERTIFICATE", leafDER), enc("PRIVATE KEY", keyDER)}
}

func (c testCA) env() []string {
	return []string{"GRPCTEST_TLS_CA_PEM=" + c.caPEM, "GRPCTEST_TLS_CERT_PEM=" + c.certPEM, "GRPCTEST_TLS_KEY_PEM=" + c.keyPEM}
}

// hostConfig is the host side as upstream's TestClient_TLS_grpc sets ClientConfig.TLSConfig
// (helperTLSProvider's config: the certificate, the CA as roots, ServerName 127.0.0.1).
func (c testCA) hostConfig(t *testing.T) *tls.Config {
	t.Helper()
	cert, err := tls.X509KeyPair([]byte(c.certPEM), []byte(c.keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(c.caPEM))
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ClientCAs: roots, ServerName: "127.0.0.1"}
}

// TestPreSharedTLS: go-plugin's pre-shared TLS, the plugin's ServeConfig.TLSProvider and the host's
// ClientConfig.TLSConfig (Rust: Server::tls). Mode test-grpc-tls: Double(21) == 42 and
// Bidirectional (brokered connections over the same TLS) work with the default and the
// multiplexed broker, Kill is graceful; a host without TLS gets no answer.
//
// Mirrors go-plugin TestClient_TLS_grpc (client_test.go).
func TestPreSharedTLS(t *testing.T) {
	ca := newTestCA(t)
	eachImpl(t, true, func(t *testing.T, im impl) {
		for _, mux := range []bool{false, true} {
			name := map[bool]string{false: "default", true: "mux"}[mux]
			t.Run(name, func(t *testing.T) {
				h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"test-grpc-tls"}, env: ca.env(), tls: ca.hostConfig(t), mux: mux})
				tc := h.dispense(t)
				mustDouble(t, tc, 21, 42)
				for i := 0; i < 2; i++ {
					if err := tc.Bidirectional(callCtx(t)); err != nil {
						t.Fatalf("Bidirectional #%d over pre-shared TLS: %v", i+1, err)
					}
				}
				h.killGracefully(t)
			})
		}
		t.Run("plaintext host", func(t *testing.T) {
			h := newHost(t, im.bin(t, im.grpctest), hostOpts{args: []string{"test-grpc-tls"}, env: ca.env()})
			proto, err := h.c.Client()
			if err != nil {
				return // refused while connecting: fine
			}
			if err := proto.Ping(); err == nil {
				t.Fatal("a host without TLS got a Ping answer from a pre-shared TLS plugin")
			}
		})
	})
}
