//! goplugin: HashiCorp go-plugin's gRPC wire protocol in Rust, byte-compatible with go-plugin
//! v1.8.0 (spec: go-plugin-wire.md). The plugin role is [`Server`], the host role [`Client`];
//! self-re-exec is [`reexec`].

#![warn(missing_docs)]
// Unsafe code only where a system call has no safe wrapper, in the modules allowed below (and in
// `nomad/`, each module that needs it), every block with its `// SAFETY:` reason.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod broker;
mod client;
mod controller;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod gojson;
pub(crate) mod h2_authority;
pub mod handshake;
pub mod hclog;
#[cfg(unix)]
#[allow(unsafe_code)] // pre_exec and close_range(2), which nix does not wrap
pub(crate) mod inherit;
pub(crate) mod mux;
pub(crate) mod negotiate;
#[cfg(all(feature = "nomad", target_os = "linux"))]
pub mod nomad;
pub(crate) mod process;
#[cfg(target_os = "linux")]
pub(crate) mod procfs;
pub mod proto;
pub mod reattach;
pub mod reexec;
mod server;
pub mod stdio;
pub mod tls;
mod tls_accept;
pub mod transport;

/// The largest gRPC message go-plugin's Go peers send and accept (`math.MaxInt32` bytes, spec
/// go-plugin-wire.md §7.3), the default limit both roles here set on the services and clients
/// they build. tonic's own default for decoding is 4 MiB and is set per generated server or
/// client, so apply the limit to yours too: `KvServer::new(kv)` with
/// `.max_decoding_message_size(s.max_message_size())` in [`Services`], `KvClient::new(channel)`
/// with `.max_decoding_message_size(client.max_message_size())` on a [`Client`]'s channel.
/// [`Server::max_message_size`] and [`ClientBuilder::max_message_size`] change it.
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

pub use broker::{Broker, BrokerError};
pub use client::{Client, ClientBuilder, ClientError, Exit};
pub use handshake::{HandshakeConfig, HandshakeLine, Network, Protocol};
pub use reattach::ReattachConfig;
pub use server::{ServeError, Server, Services, COOKIE_MISCONFIGURED_TEXT, COOKIE_MISMATCH_TEXT};
pub use transport::ListenConfig;

/// The README's plugin and host snippets, compiled as doc tests against the public API.
#[cfg(all(doctest, feature = "examples"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
