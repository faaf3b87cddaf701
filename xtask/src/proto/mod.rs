//! Rust code for the workspace's `.proto` files: prost messages and tonic
//! clients and servers, generated without a system `protoc` (protox parses
//! the files).

mod fields;
mod message;

use std::fs;
use std::path::{Path, PathBuf};

use crate::files::Generated;

/// One set of `.proto` files and where its Rust goes.
struct Set {
    /// The directory the files are in, relative to the workspace root.
    dir: &'static str,
    files: &'static [&'static str],
    /// Each proto package lands in `<out>/<package>.rs`.
    out: &'static str,
    /// The file for protos without a package, if the set has them.
    unpackaged: Option<&'static str>,
    /// Message fields generated boxed.
    boxed: &'static [&'static str],
    /// The codec the clients and servers use, if not tonic's `ProstCodec`.
    codec: Option<&'static str>,
    /// Whether to generate tonic clients and servers.
    services: bool,
    /// The type that keeps each message's unknown fields, if the messages
    /// keep them (see `message.rs`); plain prost drops them.
    unknown_fields: Option<&'static str>,
}

/// The NSM messages' fields generated boxed, the same in every set that
/// generates NSM's API so that the sets' types keep one shape.
const BOXED: &[&str] = &[
    ".networkservice.NetworkServiceRequest.connection",
    ".connection.Connection.mechanism",
    ".connection.Connection.context",
    ".connection.Connection.path",
];

const SETS: &[Set] = &[
    // NSM's API, in connect-proto: messages, clients and servers.
    Set {
        dir: "proto/api",
        files: &[
            "connectioncontext.proto",
            "connection.proto",
            "networkservice.proto",
        ],
        out: "proto/src/generated",
        unpackaged: None,
        // A request's connection and a connection's nested messages, as Go
        // holds them: each costs a pointer when absent, and a connection
        // moves as a few words through every chain element and future.
        // The wire format is unchanged.
        boxed: BOXED,
        // Buffers sized for NSM's messages; see proto/src/codec.rs.
        codec: Some("crate::codec::NsmCodec"),
        services: true,
        // A passthrough forwards what it does not understand.
        unknown_fields: Some("crate::unknown::UnknownFields"),
    },
    // The same API as plain prost generates it (unknown fields dropped):
    // the baseline the tests and the codec benchmark compare with.
    Set {
        dir: "proto/api",
        files: &[
            "connectioncontext.proto",
            "connection.proto",
            "networkservice.proto",
        ],
        out: "tests/src/generated/plain",
        unpackaged: None,
        boxed: BOXED,
        codec: None,
        services: false,
        unknown_fields: None,
    },
    // A newer peer's API: the same messages with fields no release has,
    // of every wire type and at several depths. The tests' callers and
    // remotes speak it to see that connect forwards what it does not know.
    Set {
        dir: "tests/proto/future",
        files: &[
            "connectioncontext.proto",
            "connection.proto",
            "networkservice.proto",
        ],
        out: "tests/src/generated/future",
        unpackaged: None,
        boxed: &[],
        codec: None,
        services: true,
        unknown_fields: None,
    },
    // The SPIFFE Workload API's X.509 half, served by the tests' Workload
    // API server; its client is for tests of the server itself.
    Set {
        dir: "tests/proto",
        files: &["workload.proto"],
        out: "tests/src/generated",
        unpackaged: Some("workload"),
        boxed: &[],
        codec: None,
        services: true,
        unknown_fields: None,
    },
];

pub(crate) fn generate(root: &Path) -> Result<Vec<Generated>, String> {
    let mut generated = Vec::new();
    for set in SETS {
        generated.extend(generate_set(root, set)?);
    }
    Ok(generated)
}

fn generate_set(root: &Path, set: &Set) -> Result<Vec<Generated>, String> {
    let dir = root.join(set.dir);
    let descriptors = protox::compile(set.files, [&dir])
        .map_err(|e| format!("compiling protos in {}: {e}", set.dir))?;

    let out = tempfile::tempdir().map_err(|e| format!("making a scratch directory: {e}"))?;
    let mut builder = tonic_prost_build::configure()
        .build_client(set.services)
        .build_server(set.services)
        .build_transport(false)
        .emit_rerun_if_changed(false);
    if let Some(codec) = set.codec {
        builder = builder.codec_path(codec);
    }
    for field in set.boxed {
        builder = builder.boxed(field);
    }
    builder
        .out_dir(out.path())
        .compile_fds(descriptors)
        .map_err(|e| format!("generating Rust from protos: {e}"))?;
    collect(out.path(), set)
}

fn collect(out: &Path, set: &Set) -> Result<Vec<Generated>, String> {
    let mut generated = Vec::new();
    let entries = fs::read_dir(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("unexpected output file {}", path.display()))?
            .to_owned();
        let mut body = fs::read_to_string(&path).map_err(|e| format!("reading {name}: {e}"))?;
        if let Some(unknown) = set.unknown_fields {
            body = keep_unknown_fields(&body, unknown).map_err(|e| format!("{name}: {e}"))?;
        }
        let (origin, name) = match (name.strip_suffix(".rs"), set.unpackaged) {
            (Some("_"), Some(file)) => (
                "the protos without a package".to_owned(),
                format!("{file}.rs"),
            ),
            (Some(package), _) if package != "_" => {
                (format!("the `{package}` package"), name.clone())
            }
            _ => return Err(format!("unexpected output file {name} from {}", set.dir)),
        };
        let contents = format!(
            "// @generated by `cargo xtask codegen` from {origin} in\n\
             // {}. Do not edit by hand: change the .proto file and rerun it.\n\n{body}",
            set.dir
        );
        generated.push(Generated {
            path: PathBuf::from(set.out).join(&name),
            // `cargo fmt --all` reaches these files through their modules, so
            // they are written as it would leave them.
            contents: crate::files::rustfmt(&contents)?,
        });
    }
    Ok(generated)
}

fn keep_unknown_fields(body: &str, unknown: &str) -> Result<String, String> {
    let mut file =
        syn::parse_file(body).map_err(|e| format!("parsing prost-build's output: {e}"))?;
    let unknown = syn::parse_str(unknown).map_err(|e| format!("`{unknown}`: {e}"))?;
    message::keep_unknown_fields(&mut file, &unknown)?;
    Ok(format!(
        "// Messages keep their unknown fields: see `xtask/src/proto/message.rs`.\n\n{}",
        prettyplease::unparse(&file)
    ))
}
