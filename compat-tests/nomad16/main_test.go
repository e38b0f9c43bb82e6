package nomad16

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// moduleRoot is this module's directory (the one holding go.mod).
var moduleRoot string

// The Nomad reference, found by TestMain.
var nomad struct {
	bin     string // the binary, when found
	version string // "1.6.5"
	// skip, when set, is the one line saying why the reference subtests do not run.
	skip string
	// err, when set, is why a binary named by NOMAD_BIN is unusable (the reference subtests fail).
	err error
}

const noNomadLine = "skipping: no Nomad binary (set NOMAD_BIN=/path/to/nomad)"

func TestMain(m *testing.M) {
	root, err := findModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	moduleRoot = root
	findNomad()
	os.Exit(m.Run())
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
			return "", errors.New("nomad16: go.mod not found above the working directory")
		}
		dir = parent
	}
}

var versionLine = regexp.MustCompile(`Nomad v(\d+)\.(\d+)\.(\d+)\S*`)

// findNomad looks for NOMAD_BIN (else `nomad` on PATH) and asks it its version: only a v1.6.x
// binary is this module's reference (its helpers were built against go-plugin v1.4.10).
func findNomad() {
	bin := os.Getenv("NOMAD_BIN")
	if bin == "" {
		p, err := exec.LookPath("nomad")
		if err != nil {
			nomad.skip = noNomadLine
			return
		}
		bin = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		nomad.err = fmt.Errorf("NOMAD_BIN=%s: `version` failed: %v", bin, err)
		return
	}
	v := versionLine.FindSubmatch(out)
	if v == nil {
		nomad.err = fmt.Errorf("NOMAD_BIN=%s: `version` printed no Nomad version: %q", bin, out)
		return
	}
	major, _ := strconv.Atoi(string(v[1]))
	minor, _ := strconv.Atoi(string(v[2]))
	nomad.bin = bin
	nomad.version = fmt.Sprintf("%s.%s.%s", v[1], v[2], v[3])
	if major != 1 || minor != 6 {
		nomad.skip = fmt.Sprintf("skipping: %s is Nomad v%s; the nomad16 reference tests need Nomad 1.6.x "+
			"(go-plugin v1.4.10); Nomad 1.7+ is compared in compat-tests/gohost/nomad_reference_test.go",
			bin, nomad.version)
	}
}

// TestNomad16Reference says in one line whether the reference subtests of this module run.
func TestNomad16Reference(t *testing.T) {
	if nomad.err != nil {
		t.Fatal(nomad.err)
	}
	if nomad.skip != "" {
		t.Skip(nomad.skip)
	}
	t.Logf("reference: %s (Nomad v%s)", nomad.bin, nomad.version)
}

// helper is one implementation of Nomad's per-task helpers.
type helper struct {
	name string // subtest name: "nomad" (reference) or "rust"
	bin  string
}

func rustBinary() string {
	if p := os.Getenv("GOPLUGIN_BIN"); p != "" {
		return p
	}
	return filepath.Join(moduleRoot, "..", "..", "target", "debug", "goplugin")
}

// eachHelper runs fn as subtest "nomad" (when the reference applies) and then "rust", one after
// the other (they share the host's cgroup parents).
func eachHelper(t *testing.T, fn func(t *testing.T, h helper)) {
	t.Helper()
	if nomad.skip == "" {
		t.Run("nomad", func(t *testing.T) {
			if nomad.err != nil {
				t.Fatal(nomad.err)
			}
			fn(t, helper{name: "nomad", bin: nomad.bin})
		})
	}
	t.Run("rust", func(t *testing.T) {
		bin := rustBinary()
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("Rust binary missing (%v): run `cargo build --bin goplugin` in the repository root "+
				"or set GOPLUGIN_BIN", err)
		}
		fn(t, helper{name: "rust", bin: bin})
	})
}
