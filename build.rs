//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no system `protoc`.
//! Each pass gets its own output directory because kv.proto and counter.proto share the
//! protobuf package `proto` (as upstream does) but not their messages.

use std::path::PathBuf;

fn compile(files: &[&str], subdir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join(subdir);
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .out_dir(&out)
        .compile_fds(fds)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    compile(
        &[
            "plugin/grpc_broker.proto",
            "plugin/grpc_controller.proto",
            "plugin/grpc_stdio.proto",
        ],
        "plugin",
    )?;
    compile(&["examples/kv.proto"], "kv")?;
    compile(&["examples/counter.proto"], "counter")?;
    compile(&["examples/grpctest.proto"], "grpctest")?;
    compile(&["nomad/logmon.proto"], "nomad")?;
    Ok(())
}
