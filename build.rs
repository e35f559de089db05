//! Compiles `proto/roster/v1` into Rust with tonic-prost-build, using a vendored protoc so a
//! fresh machine needs nothing but cargo.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/roster/v1/errors.proto",
    "proto/roster/v1/resources.proto",
    "proto/roster/v1/team_service.proto",
    "proto/roster/v1/access_service.proto",
    "proto/roster/v1/watch_service.proto",
    "proto/envoy/service/auth/v3/external_auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    let includes = [PathBuf::from("proto"), well_known];
    // Messages and clients.
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("roster_descriptor.bin"))
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL (see src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::RosterCodec")
        .compile_protos(&protos, &includes)?;
    // Servers, over the messages above, except that BatchAuthorize reads its request into a
    // form that keeps a hundred checks' strings in one buffer (see src/grpc/batch.rs).
    let servers = out_dir.join("server");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&servers)
        .extern_path(".roster.v1", "crate::pb")
        .extern_path(".envoy.service.auth.v3", "crate::pb::envoy")
        .extern_path(".roster.v1.BatchAuthorizeRequest", "crate::grpc::batch::BatchChecks")
        .codec_path("crate::grpc::codec::RosterCodec")
        .compile_protos(&protos, &includes)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
