//! The machine's floor under every unary row: two processes passing 64 bytes back and forth
//! over a unix socket with blocking reads and writes, no HTTP/2, no gRPC, no runtime. A gRPC
//! round trip cannot be faster than this on the same placement; the gap between the two is what
//! the stacks (ours and Go's) cost.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per message, about a small unary request's frames.
const SIZE: usize = 64;
const WARM_UP: usize = 200;

/// The echo side (`bench_host --socket-echo PATH`): connects to `path` and sends every message
/// back until the measuring side closes.
pub fn echo(path: &str) -> std::io::Result<()> {
    let mut conn = UnixStream::connect(path)?;
    let mut buf = [0u8; SIZE];
    loop {
        match conn.read_exact(&mut buf) {
            Ok(()) => conn.write_all(&buf)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// One round: starts `program --socket-echo SOCKET`, waits for its connection, sends
/// [`WARM_UP`] untimed messages, then `calls` timed ones; the sorted round-trip times.
pub fn round(program: &str, dir: &Path, calls: usize) -> std::io::Result<Vec<Duration>> {
    let sock = dir.join("floor.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)?;
    let mut child = std::process::Command::new(program)
        .arg("--socket-echo")
        .arg(&sock)
        .spawn()?;
    let (mut conn, _) = listener.accept()?;
    let msg = [7u8; SIZE];
    let mut back = [0u8; SIZE];
    let mut lat = Vec::with_capacity(calls);
    for i in 0..WARM_UP + calls {
        let t0 = Instant::now();
        conn.write_all(&msg)?;
        conn.read_exact(&mut back)?;
        if i >= WARM_UP {
            lat.push(t0.elapsed());
        }
    }
    drop(conn);
    let status = child.wait()?;
    let _ = std::fs::remove_file(&sock);
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{program} --socket-echo: {status}"
        )));
    }
    lat.sort();
    Ok(lat)
}
