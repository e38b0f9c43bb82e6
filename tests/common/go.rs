//! Go plugins for direction-B tests, built once per test process from compat-tests (go-plugin
//! v1.8.0 pinned there); Go's build cache makes repeated builds cheap.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Builds the Go plugins once per test run (Go's build cache makes repeats cheap).
pub fn go_bins() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(MANIFEST).join("target/go-plugins");
        std::fs::create_dir_all(&out).unwrap();
        let compat = PathBuf::from(MANIFEST).join("compat-tests");
        let build = |args: &[&str]| {
            let status = Command::new("go")
                .args(args)
                .current_dir(&compat)
                .status()
                .expect("the Go toolchain is required for these tests");
            assert!(status.success(), "go {args:?} failed");
        };
        let o = |name: &str| out.join(name).to_string_lossy().into_owned();
        build(&[
            "test",
            "-c",
            "-o",
            &o("go-plugin-ref.test"),
            "github.com/hashicorp/go-plugin",
        ]);
        build(&[
            "build",
            "-o",
            &o("grpctest-plugin-go"),
            "./cmd/grpctest-plugin-go",
        ]);
        build(&[
            "build",
            "-o",
            &o("kv-plugin-go"),
            "github.com/hashicorp/go-plugin/examples/grpc/plugin-go-grpc",
        ]);
        build(&[
            "build",
            "-o",
            &o("counter-plugin-go"),
            "github.com/hashicorp/go-plugin/examples/bidirectional/plugin-go-grpc",
        ]);
        out
    })
}

/// go-plugin's reference helper in `mode` (`helperProcess` of plugin_test.go).
pub fn reference(mode: &str) -> Command {
    let mut cmd = Command::new(go_bins().join("go-plugin-ref.test"));
    cmd.args(["-test.run=TestHelperProcess", "--", mode])
        .env("GO_WANT_HELPER_PROCESS", "1");
    cmd
}

/// The compat-tests Go reference plugin in `mode`.
pub fn compat(args: &[&str]) -> Command {
    let mut cmd = Command::new(go_bins().join("grpctest-plugin-go"));
    cmd.args(args);
    cmd
}
