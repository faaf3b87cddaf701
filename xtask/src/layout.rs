//! `cargo xtask layout PROFILE`: the program's hot code, laid out together.
//!
//! The kernel maps a binary's code 64 KiB around each page a process first
//! touches, so a program whose hot functions are spread over a 10 MB `.text`
//! keeps most of it resident. A linker script (`INSERT BEFORE .text`, which
//! GNU ld and lld both read) puts the functions a callgrind profile saw run
//! in a section of their own, hottest first; `connect-runtime`'s build
//! script hands it to the linker for its examples.
//!
//! Each function is named twice. `.text.hot` names it exactly, hash and all:
//! a build of the same packages and features gives each instance the same
//! name, so only the instances the profile saw run are laid out. `.text.warm`
//! names it without the hash that legacy-mangled names end in, so a build
//! with other features or dependencies' versions still lays out the same
//! functions, with every other instance of a generic one beside them. A
//! function the profile never saw stays in `.text`.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// The script, relative to the workspace root.
pub const SCRIPT: &str = "connect-runtime/examples/passthrough/hot-text.ld";

/// Rewrites [`SCRIPT`] from a callgrind profile of the program (recorded
/// with `--demangle=no`, of a build linked without the script); returns how
/// many functions it lays out.
pub fn write_script(root: &Path, profile: &Path) -> Result<usize, String> {
    let text =
        fs::read_to_string(profile).map_err(|e| format!("reading {}: {e}", profile.display()))?;
    let hot = hot_functions(&text)?;
    let (exact, unhashed) = patterns(&hot);
    if exact.is_empty() {
        return Err(format!(
            "{} names no function of the profiled program",
            profile.display()
        ));
    }
    let path = root.join(SCRIPT);
    fs::write(&path, script(&exact, &unhashed))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(exact.len())
}

/// The functions of the profiled command's own object, by self cost,
/// costliest first (ties by name, so the output is stable).
fn hot_functions(profile: &str) -> Result<Vec<(String, u64)>, String> {
    let program = profile
        .lines()
        .find_map(|l| l.strip_prefix("cmd:"))
        .and_then(|cmd| cmd.split_whitespace().next())
        .ok_or("the profile has no `cmd:` line: is it callgrind's output?")?;

    let mut objects = Names::default();
    let mut functions = Names::default();
    let mut object = String::new();
    let mut in_program = false;
    let mut function = String::new();
    let mut cost: HashMap<String, u64> = HashMap::new();
    // Cost callgrind could not place in any object, and the program's own.
    let (mut unplaced, mut own) = (0u64, 0u64);
    // A `calls=` line is followed by the call's inclusive cost, which is
    // the callee's, not this function's.
    let mut skip_next = false;
    for line in profile.lines() {
        if skip_next {
            skip_next = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix("ob=") {
            object = objects.resolve(rest)?;
            in_program = is_program(&object, program);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            function = functions.resolve(rest)?;
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            // Defines the name for later references; the current function
            // does not change.
            functions.resolve(rest)?;
        } else if let Some(rest) = line.strip_prefix("cob=") {
            objects.resolve(rest)?;
        } else if line.starts_with("calls=") {
            skip_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            let self_cost = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            if object == "???" {
                unplaced += self_cost;
            }
            if !in_program || function.is_empty() {
                continue;
            }
            own += self_cost;
            *cost.entry(function.clone()).or_default() += self_cost;
        }
    }
    // valgrind places code by the object's `.text`: a program already laid
    // out runs its hot code from `.text.hot`, which it cannot place.
    if unplaced > own {
        return Err(format!(
            "callgrind placed {unplaced} of the profile's cost in no object (`???`), more than \
             the program's own {own}: profile a program linked without the script \
             (built with CONNECT_NO_HOT_TEXT=1)"
        ));
    }
    let mut hot: Vec<(String, u64)> = cost.into_iter().collect();
    hot.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(hot)
}

/// Whether callgrind's object path names the command it ran, which `cmd:`
/// may give relative to where it was run.
fn is_program(object: &str, program: &str) -> bool {
    let program = program.trim_start_matches("./");
    object == program
        || object
            .strip_suffix(program)
            .is_some_and(|dir| dir.ends_with('/'))
}

/// callgrind's name compression: `(id) name` defines an id, `(id)` reuses it.
#[derive(Default)]
struct Names(HashMap<String, String>);

impl Names {
    fn resolve(&mut self, field: &str) -> Result<String, String> {
        let Some(rest) = field.strip_prefix('(') else {
            return Ok(field.to_owned());
        };
        let (id, name) = rest
            .split_once(')')
            .ok_or_else(|| format!("unclosed name id in `{field}`"))?;
        let name = name.trim();
        if name.is_empty() {
            self.0
                .get(id)
                .cloned()
                .ok_or_else(|| format!("name id ({id}) used before it is defined"))
        } else {
            self.0.insert(id.to_owned(), name.to_owned());
            Ok(name.to_owned())
        }
    }
}

/// The script's two lists of input-section patterns, exact and unhashed,
/// one per function in order, without duplicates; names a linker script
/// cannot hold are left out.
fn patterns(hot: &[(String, u64)]) -> (Vec<String>, Vec<String>) {
    let (mut exact, mut unhashed) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for (name, _) in hot {
        let Some(name) = symbol(name) else { continue };
        let p = sections(name);
        if seen.insert(p.clone()) {
            exact.push(p);
        }
        if let Some(body) = unhash(name) {
            let p = sections(&format!("{body}17h"));
            if seen.insert(p.clone()) {
                unhashed.push(p);
            }
        }
    }
    (exact, unhashed)
}

/// The symbol a callgrind name is for: callgrind's recursion suffix (`'2`)
/// and LLVM's `.llvm.N` and `.N` dropped. `None` for names that are not
/// Rust's symbols or that a linker script cannot hold.
fn symbol(name: &str) -> Option<&str> {
    let name = match name.rsplit_once('\'') {
        Some((base, depth)) if depth.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    };
    // The suffixes LLVM gives a numbered (`.N`) or promoted (`.llvm.N`)
    // local symbol differ from build to build.
    let name = match name.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            base.strip_suffix(".llvm").unwrap_or(base)
        }
        _ => name,
    };
    let printable = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(&b));
    (printable && (name.starts_with("_ZN") || name.starts_with("_R"))).then_some(name)
}

/// A legacy-mangled name without its hash (`17h`, 16 hex digits, `E`).
fn unhash(name: &str) -> Option<&str> {
    let body = name.strip_suffix('E')?;
    let split = body.len().checked_sub(19)?;
    is_legacy_hash(&body[split..]).then(|| &body[..split])
}

/// The sections a function's code may be in: LLVM prefixes those of
/// functions it judges cold or startup-only (`.text.unlikely.` and others),
/// and its local-symbol suffixes follow the name.
fn sections(name: &str) -> String {
    format!(".text.*{name}*")
}

fn is_legacy_hash(s: &str) -> bool {
    s.len() == 19 && s.starts_with("17h") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn script(exact: &[String], unhashed: &[String]) -> String {
    let mut out = String::from(
        "/* @generated by `cargo xtask layout PROFILE` from a callgrind profile of\n   \
         the program (BENCHMARKS.md, \"Code layout\"). Do not edit by hand. */\n\
         SECTIONS\n{\n",
    );
    for (section, patterns) in [(".text.hot", exact), (".text.warm", unhashed)] {
        out.push_str(&format!("  {section} :\n  {{\n"));
        for p in patterns {
            out.push_str(&format!("    *({p})\n"));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\nINSERT BEFORE .text;\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "\
version: 1
creator: callgrind-3.19.0
cmd:  /tmp/prog --listen x
events: Ir
ob=(1) /tmp/prog
fl=(1) src/a.rs
fn=(1) _ZN4main3hot17h0123456789abcdefE
10 500
cfn=(2) _ZN4main4cold17hfedcba9876543210E
calls=1 20
11 9000
fn=(2)
20 7
ob=(2) /usr/lib/libc.so.6
fn=(3) malloc
1 100000
ob=(1)
fn=(4) _RNvCs1234_4core5write'2
+2 40
fn=(1)
12 3
";

    #[test]
    fn self_cost_only_of_the_programs_own_functions() {
        let hot = hot_functions(PROFILE).unwrap();
        assert_eq!(
            hot,
            vec![
                ("_ZN4main3hot17h0123456789abcdefE".to_owned(), 503),
                ("_RNvCs1234_4core5write'2".to_owned(), 40),
                ("_ZN4main4cold17hfedcba9876543210E".to_owned(), 7),
            ],
            "the call's inclusive 9000 is not the caller's, libc's malloc is not the program's"
        );
    }

    #[test]
    fn names_lose_the_recursion_and_local_suffixes_and_only_the_warm_list_the_hash() {
        for (name, want) in [
            (
                "_ZN4main3hot17h0123456789abcdefE",
                "_ZN4main3hot17h0123456789abcdefE",
            ),
            ("_RNvCs1234_4core5write'2", "_RNvCs1234_4core5write"),
            (
                "_ZN4main3hot17h0123456789abcdefE.llvm.1234567",
                "_ZN4main3hot17h0123456789abcdefE",
            ),
            (
                "_ZN4main3hot17h0123456789abcdefE.5830",
                "_ZN4main3hot17h0123456789abcdefE",
            ),
        ] {
            assert_eq!(symbol(name), Some(want), "{name}");
        }
        assert_eq!(symbol("malloc"), None);
        assert_eq!(symbol("_ZN4main3bad(x)"), None);
        assert_eq!(
            unhash("_ZN4main3hot17h0123456789abcdefE"),
            Some("_ZN4main3hot")
        );
        assert_eq!(unhash("_RNvCs1234_4core5write"), None);
        assert_eq!(unhash("_ZN4main3hotE"), None);
        // Two instances of a generic function: each exactly, one unhashed.
        let hot = [
            ("_ZN1a1f17h0000000000000000E".to_owned(), 2),
            ("_ZN1a1f17h1111111111111111E".to_owned(), 1),
            ("_RNvCs1234_4core5write".to_owned(), 1),
        ];
        assert_eq!(
            patterns(&hot),
            (
                vec![
                    ".text.*_ZN1a1f17h0000000000000000E*".to_owned(),
                    ".text.*_ZN1a1f17h1111111111111111E*".to_owned(),
                    ".text.*_RNvCs1234_4core5write*".to_owned(),
                ],
                vec![".text.*_ZN1a1f17h*".to_owned()],
            )
        );
    }

    #[test]
    fn the_script_inserts_the_exact_then_the_unhashed_section_before_text() {
        let s = script(
            &[".text.*_ZN1a1f17h0E*".to_owned()],
            &[".text.*_ZN1a1f17h*".to_owned()],
        );
        assert!(s.starts_with("/* @generated by `cargo xtask layout PROFILE`"));
        assert!(s.contains(
            "  .text.hot :\n  {\n    *(.text.*_ZN1a1f17h0E*)\n  }\n  \
             .text.warm :\n  {\n    *(.text.*_ZN1a1f17h*)\n  }\n}\n"
        ));
        assert!(s.ends_with("INSERT BEFORE .text;\n"));
    }

    #[test]
    fn a_relative_command_matches_its_absolute_object() {
        assert!(is_program("/w/target/release/p", "target/release/p"));
        assert!(is_program("/w/target/release/p", "./target/release/p"));
        assert!(is_program("/tmp/p", "/tmp/p"));
        assert!(!is_program("/w/target/release/xp", "p"));
        assert!(!is_program("/usr/lib/libc.so.6", "target/release/p"));
    }

    #[test]
    fn a_profile_of_a_laid_out_program_is_refused() {
        let profile = "cmd: /p\nob=(1) /p\nfn=(1) _ZN1a1f17h0000000000000000E\n1 10\n\
                       ob=(2) ???\nfn=(2) 0x0000000000401000\n1 11\n";
        let err = hot_functions(profile).unwrap_err();
        assert!(err.contains("CONNECT_NO_HOT_TEXT=1"), "{err}");
        let placed = profile.replace("1 11", "1 9");
        assert_eq!(hot_functions(&placed).unwrap().len(), 1);
    }

    #[test]
    fn a_reference_before_its_definition_is_an_error() {
        let err = hot_functions("cmd: /p\nob=(1) /p\nfn=(7)\n1 1\n").unwrap_err();
        assert!(err.contains("(7)"), "{err}");
    }
}
