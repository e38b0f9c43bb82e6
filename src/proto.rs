//! Generated gRPC code for go-plugin's internal services, and (features `examples` and `nomad`)
//! for go-plugin's example contracts and Nomad's helper and driver services. The `.proto`
//! sources under `proto/` are ours, wire-identical to upstream (spec §7).

/// go-plugin's internal services: `plugin.GRPCBroker`, `plugin.GRPCController`, `plugin.GRPCStdio`.
pub mod plugin {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/plugin/plugin.rs"));
}

/// go-plugin's `examples/grpc` contract: `proto.KV`.
#[cfg(feature = "examples")]
pub mod kv {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/kv/proto.rs"));
}

/// go-plugin's `examples/bidirectional` contract: `proto.Counter` and `proto.AddHelper`.
#[cfg(feature = "examples")]
pub mod counter {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/counter/proto.rs"));
}

/// go-plugin's test contract (`test/grpc`): `grpctest.Test` and `grpctest.PingPong`.
#[cfg(feature = "examples")]
pub mod grpctest {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/grpctest/grpctest.rs"));
}

/// The part of gRPC's benchmark contract (`grpc.testing.BenchmarkService`) that `scripts/bench`
/// streams with (`examples/bench_plugin`, `examples/bench_host --stream`).
#[cfg(feature = "examples")]
pub mod benchmark {
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/benchmark/grpc.testing.rs"));
}

/// Nomad's `hashicorp.nomad.client.logmon.proto.LogMon`.
#[cfg(feature = "nomad")]
pub mod logmon {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.client.logmon.proto.rs"
    ));
}

/// Nomad's driver proto (`hashicorp.nomad.plugins.drivers.proto`): the `Driver` service and
/// its messages, which the executor shares.
#[cfg(feature = "nomad")]
pub mod drivers {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.plugins.drivers.proto.rs"
    ));
}

/// Nomad's `hashicorp.nomad.plugins.executor.proto.Executor`.
#[cfg(feature = "nomad")]
pub mod executor {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad_executor/hashicorp.nomad.plugins.executor.proto.rs"
    ));
}

/// Nomad's base plugin service `hashicorp.nomad.plugins.base.proto.BasePlugin`.
#[cfg(feature = "nomad")]
pub mod base {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.plugins.base.proto.rs"
    ));
}

/// Nomad's HCL schema messages (`hashicorp.nomad.plugins.shared.hclspec`).
#[cfg(feature = "nomad")]
pub mod hclspec {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad_shared/hashicorp.nomad.plugins.shared.hclspec.rs"
    ));
}

/// Nomad's shared plugin structs (`hashicorp.nomad.plugins.shared.structs`): attributes and the
/// recoverable-error detail.
#[cfg(feature = "nomad")]
pub mod structs {
    // Comments of the .proto files, not written as rustdoc (`<task>` is not an HTML tag).
    #![allow(missing_docs, clippy::all, rustdoc::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad_shared/hashicorp.nomad.plugins.shared.structs.rs"
    ));
}
