//! The `goplugin` binary. Run as `goplugin_exec` (or with no arguments and Nomad's cookie) it is
//! the Nomad task driver. Self-re-exec entries (the plugins this binary serves as `goplugin NAME`)
//! are dispatched before anything else; the rest is a small CLI: the standalone agent
//! (`run`, `status`, `logs`, `stop`, `exec`) and two go-plugin helpers.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[cfg(feature = "examples")]
#[path = "../examples/kv_plugin.rs"]
mod kv_plugin;

/// Plugins this binary can be re-executed as (`goplugin NAME ...`), dispatched before the CLI.
const ENTRIES: &[goplugin::reexec::Entry] = &[
    #[cfg(feature = "examples")]
    goplugin::reexec::Entry::new("kv-plugin", |_| kv_plugin::run()),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new("logmon", |_| goplugin::nomad::logmon::run()),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new("executor", goplugin::nomad::executor::run),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new(
        goplugin::nomad::combined::ENTRY_NAME,
        goplugin::nomad::combined::run,
    ),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new(
        "container-init",
        goplugin::nomad::executor::isolation::stage::init_main,
    ),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new(
        "container-exec",
        goplugin::nomad::executor::isolation::stage::exec_main,
    ),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new("driver", goplugin::nomad::driver::run),
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::reexec::Entry::new(
        goplugin::nomad::agent::WATCH_ENTRY,
        goplugin::nomad::agent::watch_main,
    ),
];

#[derive(Parser)]
#[command(
    name = "goplugin",
    version,
    about = "HashiCorp go-plugin's gRPC protocol in Rust, and Nomad's executor and logmon"
)]
struct Cli {
    /// Structured logs (hclog JSON) of the agent on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a task through goplugin's own logmon and executor, as a Nomad client does.
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    Run(RunArgs),
    /// Show a detached task.
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    Status(TaskRef),
    /// Print a task's logs.
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    Logs {
        #[command(flatten)]
        task: TaskRef,
        /// Keep printing what the task writes.
        #[arg(short, long)]
        follow: bool,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
    /// Stop a detached task (its kill signal, then SIGKILL after its kill timeout).
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    Stop(TaskRef),
    /// Run a command in a detached task's context.
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    Exec {
        #[command(flatten)]
        task: TaskRef,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Parse a go-plugin handshake line and print its fields.
    Handshake {
        /// The line a plugin printed, e.g. `1|1|unix|/tmp/plugin1|grpc|`.
        line: String,
    },
    /// Generate a go-plugin AutoMTLS certificate (P-521) and print it as PEM.
    Cert,
}

#[derive(clap::Args)]
struct TaskRef {
    /// Task name.
    name: String,
    /// Directory holding the task directories.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Task name (default: the command's base name).
    #[arg(long)]
    name: Option<String>,
    /// Directory holding the task directories (default: $XDG_RUNTIME_DIR/goplugin or /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// KEY=value added to the task's environment (repeatable).
    #[arg(short, long = "env", value_parser = parse_env)]
    env: Vec<String>,
    /// User to run the task as.
    #[arg(long)]
    user: Option<String>,
    /// Working directory of the task (default: its task directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    memory: i64,
    /// Hard memory limit in MiB (-1: none, the limit above is then soft).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(-1..))]
    memory_max: i64,
    /// CPU shares.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=262144))]
    cpu: i64,
    /// Log files kept per stream.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100000))]
    max_files: u32,
    /// Size of each log file in MiB.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    max_file_size: u32,
    /// Signal sent to stop the task.
    #[arg(long, default_value = "SIGINT", value_parser = parse_signal)]
    kill_signal: String,
    /// Time between the kill signal and SIGKILL, e.g. 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    kill_timeout: Duration,
    /// Leave the task running and return; see status, logs, stop, exec.
    #[arg(short, long)]
    detach: bool,
    /// Another binary speaking the executor protocol (`BIN executor <json>`), e.g. nomad.
    #[arg(long)]
    executor_bin: Option<PathBuf>,
    /// Another binary speaking the logmon protocol (`BIN logmon`), e.g. nomad.
    #[arg(long)]
    logmon_bin: Option<PathBuf>,
    /// The task's command and arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not KEY=value")),
    }
}

fn parse_signal(s: &str) -> Result<String, String> {
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    goplugin::nomad::executor::signals::parse_shutdown_signal(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    // Copied into a Nomad agent's plugin_dir as `goplugin_exec`, or started with no arguments
    // and Nomad's cookie (a 1.6 agent starts every executable there that way): the task driver.
    #[cfg(all(feature = "nomad", target_os = "linux"))]
    if goplugin::nomad::driver::invoked_as_driver() {
        std::process::exit(goplugin::nomad::driver::run(vec![]));
    }
    goplugin::reexec::dispatch(ENTRIES);
    let cli = Cli::parse();
    if cli.verbose {
        // The agent's and its helpers' events; the HTTP/2 machinery stays at info.
        let _ = goplugin::hclog::init_plugin_logging_with(
            "goplugin",
            std::io::stderr(),
            "info,goplugin=debug",
        );
    }
    match cli.command {
        Cmd::Handshake { line } => handshake(&line),
        Cmd::Cert => match goplugin::tls::Identity::generate() {
            Ok(id) => {
                print!("{}", id.cert_pem());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        #[cfg(all(feature = "nomad", target_os = "linux"))]
        other => agent(other),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("goplugin: {e}");
    ExitCode::FAILURE
}

fn handshake(line: &str) -> ExitCode {
    match goplugin::HandshakeLine::parse(line) {
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
        Err(e) => fail(e),
    }
}

/// The agent's terminal: the task's streams on ours, its notes as `goplugin: ` lines on stderr.
/// Write errors (a closed pipe) are ignored, as a task's own writes would fail quietly.
#[cfg(all(feature = "nomad", target_os = "linux"))]
struct Console;

#[cfg(all(feature = "nomad", target_os = "linux"))]
impl goplugin::nomad::agent::Terminal for Console {
    fn stdout(&self, bytes: &[u8]) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }

    fn stderr(&self, bytes: &[u8]) {
        use std::io::Write;
        let _ = std::io::stderr().write_all(bytes);
    }

    fn note(&self, note: goplugin::nomad::agent::RunNote) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "goplugin: {note}");
    }
}

#[cfg(all(feature = "nomad", target_os = "linux"))]
fn agent(cmd: Cmd) -> ExitCode {
    use goplugin::nomad::agent;
    use std::sync::Arc;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let base = |dir: Option<PathBuf>| dir.unwrap_or_else(agent::default_base_dir);
    let exit_code = |c: i32| ExitCode::from(c.clamp(0, 255) as u8);
    let code = |r: Result<i32, agent::AgentError>| match r {
        Ok(c) => exit_code(c),
        Err(e) => fail(e),
    };
    let terminal = || -> Arc<dyn agent::Terminal> { Arc::new(Console) };
    match cmd {
        Cmd::Run(a) => {
            if let Some(user) = &a.user {
                if let Err(e) = goplugin::nomad::executor::spawn::Identity::lookup(user) {
                    return fail(e);
                }
            }
            let name = a.name.clone().unwrap_or_else(|| {
                std::path::Path::new(&a.command[0])
                    .file_name()
                    .map_or("task".into(), |n| n.to_string_lossy().into_owned())
            });
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return fail(format!("task name {name:?} must be a plain file name"));
            }
            let opts = agent::RunOptions {
                name,
                base_dir: base(a.dir),
                env: a.env,
                user: a.user,
                work_dir: a.workdir,
                memory_mb: a.memory,
                memory_max_mb: a.memory_max,
                cpu_shares: a.cpu,
                max_files: a.max_files,
                max_file_size_mb: a.max_file_size,
                kill_signal: a.kill_signal,
                kill_timeout: a.kill_timeout,
                detach: a.detach,
                executor_bin: a.executor_bin,
                logmon_bin: a.logmon_bin,
                command: a.command,
            };
            match runtime.block_on(agent::run(opts, terminal())) {
                Ok(outcome) => {
                    if let agent::RunOutcome::Exited(exit) = &outcome {
                        eprintln!("goplugin: {exit}");
                    }
                    exit_code(outcome.exit_code())
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Status(t) => match runtime.block_on(agent::status(&base(t.dir), &t.name)) {
            Ok(status) => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Logs {
            task,
            follow,
            stderr,
        } => {
            let dir = base(task.dir);
            match agent::load_state(&dir, &task.name) {
                Ok(state) => {
                    let stream = if stderr { "stderr" } else { "stdout" };
                    runtime.block_on(agent::print_logs(
                        state.log_dir,
                        task.name,
                        stream,
                        follow,
                        terminal(),
                    ));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Stop(t) => code(runtime.block_on(agent::stop(&base(t.dir), &t.name))),
        Cmd::Exec { task, command } => code(runtime.block_on(agent::exec(
            &base(task.dir),
            &task.name,
            command,
            tokio::io::stdin(),
            terminal(),
        ))),
        Cmd::Handshake { .. } | Cmd::Cert => unreachable!("handled before"),
    }
}
