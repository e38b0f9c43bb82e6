//! A small chroot for isolated-executor tests, as Nomad's agent builds one from `chroot_env`:
//! a few host binaries with the libraries `ldd` names, `/etc/passwd` and `/etc/group`, and the
//! task dir's own `local/`, `alloc/`, `secrets/`, `tmp/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Binaries every test chroot has, found on the host's PATH.
pub const BINARIES: [&str; 23] = [
    "sh", "ls", "id", "cat", "sleep", "grep", "hostname", "stty", "tail", "head", "pwd", "touch",
    "tr", "wc", "readlink", "mkdir", "env", "dd", "true", "false", "date", "tty", "echo",
];

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

fn libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn copy_into(root: &Path, host: &Path, inside: &Path) {
    let dest = root.join(inside.strip_prefix("/").unwrap_or(inside));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if !dest.exists() {
        std::fs::copy(host, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", host.display()));
    }
}

/// Fills `root` (a task dir) with the chroot. Returns `root`.
pub fn build(root: &Path) -> PathBuf {
    let mut libs = BTreeSet::new();
    for name in BINARIES {
        // A minimal host may lack one (`hostname`, say): the tests that use it then fail by
        // name, the others run.
        let Some(host) = which(name) else {
            eprintln!("chroot: {name} not found on this host, left out");
            continue;
        };
        copy_into(root, &host, &Path::new("/bin").join(name));
        libs.extend(libraries(&host));
    }
    for lib in libs {
        copy_into(root, &std::fs::canonicalize(&lib).unwrap(), &lib);
    }
    for dir in ["etc", "local", "alloc", "secrets", "tmp", "private"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/etc/passwd", root.join("etc/passwd")).unwrap();
    std::fs::copy("/etc/group", root.join("etc/group")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    root.to_path_buf()
}
