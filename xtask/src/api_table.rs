//! The message and field table of NSM's `networkservice` API: every
//! message, field (name, number, label, type), enum value and method, one
//! line each, in name order. `proto/api/upstream-fields.txt` holds the table
//! of the release `proto/api/UPSTREAM` names, made from NSM's api repository
//! by [`write_upstream`]; a test renders `proto/api/*.proto` the same way and
//! compares, so the two cannot drift apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use protox::prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

/// The API's files, in NSM's api repository and in `proto/api`.
pub const API_FILES: &[&str] = &[
    "connectioncontext.proto",
    "connection.proto",
    "networkservice.proto",
];

/// Where the upstream table is kept, relative to the workspace root.
pub const TABLE: &str = "proto/api/upstream-fields.txt";

/// Where the upstream release is named, relative to the workspace root.
pub const UPSTREAM: &str = "proto/api/UPSTREAM";

/// Where the files are in NSM's api repository.
const UPSTREAM_DIR: &str = "pkg/api/networkservice";

const HEADER: &str = "\
# The message and field table of NSM's networkservice API at the release
# proto/api/UPSTREAM names (facts from networkservicemesh/api,
# pkg/api/networkservice/*.proto). Regenerate from a clone of that repository:
#   cargo xtask api-table PATH-TO-API-CLONE
# A test checks that proto/api/*.proto has exactly this table.
";

/// The table of the `.proto` files in `dir`, headed as the checked-in one.
///
/// # Errors
///
/// The files do not compile.
pub fn render(dir: &Path) -> Result<String, String> {
    let files = protox::compile(API_FILES, [dir])
        .map_err(|e| format!("compiling the API in {}: {e}", dir.display()))?;
    let pool = DescriptorPool::from_file_descriptor_set(files)
        .map_err(|e| format!("reading the API's descriptors: {e}"))?;
    let mut lines = BTreeMap::new();
    for message in pool.all_messages() {
        if message.is_map_entry() || message.package_name() == "google.protobuf" {
            continue;
        }
        for field in message.fields() {
            let label = if field.is_map() {
                "map"
            } else if field.is_list() {
                "repeated"
            } else if field.supports_presence() && !matches!(field.kind(), Kind::Message(_)) {
                "optional"
            } else {
                "singular"
            };
            let ty = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!("a map field's kind is its entry message")
                };
                format!("{} -> {}", kind(&entry, 1), kind(&entry, 2))
            } else {
                name_of(&field.kind())
            };
            lines.insert(
                (message.full_name().to_owned(), field.number()),
                format!(
                    "field {}.{} = {} {label} {ty}",
                    message.full_name(),
                    field.name(),
                    field.number()
                ),
            );
        }
    }
    let mut out = String::from(HEADER);
    for line in lines.values() {
        writeln!(out, "{line}").expect("writing to a String");
    }
    let mut enums: Vec<_> = pool
        .all_enums()
        .filter(|e| e.package_name() != "google.protobuf")
        .collect();
    enums.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    for e in enums {
        for value in e.values() {
            writeln!(
                out,
                "enum {}.{} = {}",
                e.full_name(),
                value.name(),
                value.number()
            )
            .expect("writing to a String");
        }
    }
    let mut services: Vec<_> = pool.services().collect();
    services.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    for service in services {
        for method in service.methods() {
            let stream = |yes: bool| if yes { "stream " } else { "" };
            writeln!(
                out,
                "rpc /{}/{} ({}{}) returns ({}{})",
                service.full_name(),
                method.name(),
                stream(method.is_client_streaming()),
                method.input().full_name(),
                stream(method.is_server_streaming()),
                method.output().full_name()
            )
            .expect("writing to a String");
        }
    }
    Ok(out)
}

fn kind(entry: &MessageDescriptor, number: u32) -> String {
    let field = entry
        .get_field(number)
        .expect("a map entry has a key (1) and a value (2)");
    name_of(&field.kind())
}

fn name_of(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

/// Writes [`TABLE`] from the API files of the release [`UPSTREAM`] names,
/// taken from `clone` (a clone or bare mirror of networkservicemesh/api).
///
/// # Errors
///
/// The release's tag is missing from `clone`, git fails, or the files do
/// not compile.
pub fn write_upstream(root: &Path, clone: &Path) -> Result<String, String> {
    let release = fs::read_to_string(root.join(UPSTREAM))
        .map_err(|e| format!("reading {UPSTREAM}: {e}"))?
        .trim()
        .to_owned();
    let scratch = tempfile::tempdir().map_err(|e| format!("making a scratch directory: {e}"))?;
    extract(clone, &release, scratch.path())?;
    let table = render(scratch.path())?;
    fs::write(root.join(TABLE), &table).map_err(|e| format!("writing {TABLE}: {e}"))?;
    Ok(release)
}

fn extract(clone: &Path, release: &str, into: &Path) -> Result<(), String> {
    for file in API_FILES {
        let output = Command::new("git")
            .arg("-C")
            .arg(clone)
            .args(["show", &format!("{release}:{UPSTREAM_DIR}/{file}")])
            .output()
            .map_err(|e| format!("running git: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "git show {release}:{UPSTREAM_DIR}/{file} in {}: {}",
                clone.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        fs::write(into.join(file), output.stdout).map_err(|e| format!("writing {file}: {e}"))?;
    }
    Ok(())
}
