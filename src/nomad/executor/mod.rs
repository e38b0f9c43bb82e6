//! Nomad's executor (spec nomad-executor-logmon.md §3-§6), being built: so far the argv
//! configuration, the task cgroups, command resolution and the Shutdown signal table. The
//! `goplugin executor` entry is registered only once every RPC of the service exists, so no host
//! ever meets a half executor.

pub mod cgroups;
pub mod config;
pub mod lookup;
pub mod procstats;
pub mod signals;
pub mod spawn;
