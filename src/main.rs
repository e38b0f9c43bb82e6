//! The `goplugin` binary. Self-re-exec entries (the plugins this binary serves as `goplugin NAME`)
//! are dispatched before anything else; the rest is a small CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "../examples/kv_plugin.rs"]
mod kv_plugin;

/// Plugins this binary can be re-executed as (`goplugin NAME ...`), dispatched before the CLI.
const ENTRIES: &[goplugin::reexec::Entry] = &[
    goplugin::reexec::Entry::new("kv-plugin", |_| kv_plugin::run()),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new("logmon", |_| goplugin::nomad::logmon::run()),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new("executor", goplugin::nomad::executor::run),
];

#[derive(Parser)]
#[command(
    name = "goplugin",
    version,
    about = "HashiCorp go-plugin's gRPC protocol in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse a go-plugin handshake line and print its fields.
    Handshake {
        /// The line a plugin printed, e.g. `1|1|unix|/tmp/plugin1|grpc|`.
        line: String,
    },
    /// Generate a go-plugin AutoMTLS certificate (P-521) and print it as PEM.
    Cert,
}

fn main() -> ExitCode {
    goplugin::reexec::dispatch(ENTRIES);
    let cli = Cli::parse();
    match cli.command {
        Command::Handshake { line } => match goplugin::HandshakeLine::parse(&line) {
            Ok(l) => {
                println!("core version:  {}", l.core_version);
                println!("app version:   {}", l.app_version);
                println!("network:       {}", l.network);
                println!("address:       {}", l.address);
                println!("protocol:      {}", l.protocol.as_str());
                println!(
                    "AutoMTLS cert: {}",
                    if l.server_cert.is_some() { "yes" } else { "no" }
                );
                println!(
                    "multiplexing:  {}",
                    l.multiplex
                        .map_or("not announced".to_string(), |m| m.to_string())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("goplugin: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Cert => match goplugin::tls::Identity::generate() {
            Ok(id) => {
                print!("{}", id.cert_pem());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("goplugin: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
