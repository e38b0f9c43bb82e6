//! Generated gRPC code for go-plugin's internal services and the example contracts.
//! The `.proto` sources under `proto/` are ours, wire-identical to upstream (spec §7).

/// go-plugin's internal services: `plugin.GRPCBroker`, `plugin.GRPCController`, `plugin.GRPCStdio`.
pub mod plugin {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/plugin/plugin.rs"));
}

/// go-plugin's `examples/grpc` contract: `proto.KV`.
pub mod kv {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/kv/proto.rs"));
}

/// go-plugin's `examples/bidirectional` contract: `proto.Counter` and `proto.AddHelper`.
pub mod counter {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/counter/proto.rs"));
}

/// go-plugin's test contract (`test/grpc`): `grpctest.Test` and `grpctest.PingPong`.
pub mod grpctest {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/grpctest/grpctest.rs"));
}

/// Nomad's `hashicorp.nomad.client.logmon.proto.LogMon`.
pub mod logmon {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.client.logmon.proto.rs"
    ));
}

/// The messages of Nomad's driver proto that the executor uses
/// (`hashicorp.nomad.plugins.drivers.proto`).
pub mod drivers {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.plugins.drivers.proto.rs"
    ));
}

/// Nomad's `hashicorp.nomad.plugins.executor.proto.Executor`.
pub mod executor {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/nomad/hashicorp.nomad.plugins.executor.proto.rs"
    ));
}
