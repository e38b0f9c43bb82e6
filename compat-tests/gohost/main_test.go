package gohost

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Binaries of the Go references, filled in by TestMain.
var goRef struct {
	dir         string
	grpctest    string // ./cmd/grpctest-plugin-go
	kvPlugin    string // go-plugin examples/grpc/plugin-go-grpc
	counter     string // go-plugin examples/bidirectional/plugin-go-grpc
	kvHost      string // go-plugin examples/grpc (the host)
	counterHost string // go-plugin examples/bidirectional (the host)
}

// moduleRoot is the compat-tests directory (the one holding go.mod).
var moduleRoot string

// defaultTimeout replaces `go test`'s 10-minute default: the whole suite takes well under a
// minute, so a hang should fail fast. An explicit -timeout other than 10m is kept.
const defaultTimeout = "3m"

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil && (f.Value.String() == "10m0s" || f.Value.String() == "0s") {
		_ = f.Value.Set(defaultTimeout)
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := findModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	moduleRoot = root

	dir, err := os.MkdirTemp("", "compat-goref-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()

	goRef.dir = dir
	goRef.grpctest = filepath.Join(dir, "grpctest-plugin-go")
	goRef.kvPlugin = filepath.Join(dir, "kv-plugin-go")
	goRef.counter = filepath.Join(dir, "counter-plugin-go")
	goRef.kvHost = filepath.Join(dir, "kv-host-go")
	goRef.counterHost = filepath.Join(dir, "counter-host-go")

	builds := map[string]string{
		goRef.grpctest:    "./cmd/grpctest-plugin-go",
		goRef.kvPlugin:    "github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc",
		goRef.counter:     "github.com/hashicorp/go-plugin/examples/bidirectional/plugin-go-grpc",
		goRef.kvHost:      "github.com/hashicorp/go-plugin/examples/grpc",
		goRef.counterHost: "github.com/hashicorp/go-plugin/examples/bidirectional",
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for out, pkg := range builds {
		wg.Add(1)
		go func(out, pkg string) {
			defer wg.Done()
			cmd := exec.Command("go", "build", "-o", out, pkg)
			cmd.Dir = moduleRoot
			if b, err := cmd.CombinedOutput(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("go build %s: %v\n%s", pkg, err, b))
				mu.Unlock()
			}
		}(out, pkg)
	}
	wg.Wait()
	if len(errs) > 0 {
		fmt.Fprintln(os.Stderr, errors.Join(errs...))
		return 1
	}
	return m.Run()
}

func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("compat-tests: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// rustExamplesDir is where `cargo build --examples` puts the Rust plugins.
func rustExamplesDir() string {
	if d := os.Getenv("GOPLUGIN_EXAMPLES_DIR"); d != "" {
		return d
	}
	return filepath.Join(moduleRoot, "..", "target", "debug", "examples")
}

// impl is one implementation of the plugins under test.
type impl struct {
	name     string // subtest name: "go" or "rust"
	grpctest string
	kv       string
	counter  string
	// kvMarker is the text the kv plugin appends to every value.
	kvMarker string
}

func implementations() []impl {
	rust := rustExamplesDir()
	return []impl{
		{
			name:     "go",
			grpctest: goRef.grpctest,
			kv:       goRef.kvPlugin,
			counter:  goRef.counter,
			kvMarker: "\n\nWritten from plugin-go-grpc",
		},
		{
			name:     "rust",
			grpctest: filepath.Join(rust, "grpctest_plugin"),
			kv:       filepath.Join(rust, "kv_plugin"),
			counter:  filepath.Join(rust, "counter_plugin"),
			kvMarker: "\n\nWritten from plugin-rust",
		},
	}
}

// bin returns path after checking that it exists; a missing Rust binary fails the test (it is
// never skipped).
func (im impl) bin(t testing.TB, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if im.name == "rust" {
			t.Fatalf("Rust plugin binary missing: %v\nrun `cargo build --examples` in the repository root "+
				"(or set GOPLUGIN_EXAMPLES_DIR to the directory holding grpctest_plugin, kv_plugin, counter_plugin)", err)
		}
		t.Fatalf("Go reference binary missing: %v", err)
	}
	return path
}

// eachImpl runs fn as one subtest per implementation. parallel marks the subtests parallel;
// tests that change process-global state (os.Stdin) pass false.
func eachImpl(t *testing.T, parallel bool, fn func(t *testing.T, im impl)) {
	t.Helper()
	for _, im := range implementations() {
		t.Run(im.name, func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			fn(t, im)
		})
	}
}

// shortName is the host logger's sub-logger name for a plugin binary (go-plugin names it after
// the executable's base name).
func shortName(path string) string {
	return filepath.Base(path)
}
