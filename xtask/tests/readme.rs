//! The README's walk through the code ("Follow one payment") and its table
//! of hazards ("Where the document stops") point at files and at what they
//! define, as `` `path` → `name` ``: a function, a type, a trait, or a
//! method as `Type::method`. Each pointer must still lead somewhere, so
//! that renaming or moving code fails here instead of leaving the reader at
//! a dead end. Reads files only: no broker, no database.

use std::path::{Path, PathBuf};

/// The README sections whose pointers are checked.
const SECTIONS: [&str; 2] = ["## Follow one payment", "## Where the document stops"];

/// What separates a pointer's file from its name.
const ARROW: &str = "` → `";

#[test]
fn every_file_and_name_the_readme_points_to_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    let mut stale = Vec::new();
    for heading in SECTIONS {
        let pointers = pointers(&section(&readme, heading)).unwrap_or_else(|e| panic!("{heading}: {e}"));
        assert!(
            !pointers.is_empty(),
            "{heading}: no `path` → `name` pointers found"
        );
        stale.extend(stale_pointers("README.md", &pointers));
    }
    assert!(
        stale.is_empty(),
        "the README points at code that is not there any more; update the README or the code:\n  {}",
        stale.join("\n  ")
    );
}

/// `cargo xtask tour` names, after each step, the code that did it, in the
/// same form: those pointers must lead somewhere too.
#[test]
fn every_file_and_name_the_tour_points_to_exists() {
    let tour = std::fs::read_to_string(root().join("xtask/src/tour.rs")).expect("tour.rs is readable");
    let lines: Vec<(usize, &str)> = tour
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(ARROW))
        .map(|(i, line)| (i + 1, line))
        .collect();
    let pointers = pointers(&lines).unwrap_or_else(|e| panic!("tour.rs: {e}"));
    assert!(pointers.len() >= 8, "tour.rs names the code of each of its steps");
    let stale = stale_pointers("xtask/src/tour.rs", &pointers);
    assert!(
        stale.is_empty(),
        "the tour points at code that is not there any more:\n  {}",
        stale.join("\n  ")
    );
}

/// The workspace root: xtask is one level below it.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
}

/// Each of `pointers` (read from `file`) that leads nowhere, and why.
fn stale_pointers(file: &str, pointers: &[Pointer]) -> Vec<String> {
    pointers
        .iter()
        .filter_map(|pointer| {
            check(root(), pointer).err().map(|why| {
                format!(
                    "{file} line {} (`{}` → `{}`): {why}",
                    pointer.line, pointer.path, pointer.name
                )
            })
        })
        .collect()
}

/// One `` `path` → `name` `` of the README (or the tour).
#[derive(Debug, PartialEq)]
struct Pointer {
    /// 1-based, in the file it was read from.
    line: usize,
    path: String,
    name: String,
}

/// The lines under `heading` (with their line numbers) up to the next
/// heading of the same or a higher level; panics if there is no such
/// heading.
fn section<'a>(text: &'a str, heading: &str) -> Vec<(usize, &'a str)> {
    let mut lines = text.lines().enumerate();
    lines
        .by_ref()
        .find(|(_, line)| line.trim_end() == heading)
        .unwrap_or_else(|| panic!("README.md has no `{heading}` section"));
    lines
        .take_while(|(_, line)| !(line.starts_with("## ") || line.starts_with("# ")))
        .map(|(i, line)| (i + 1, line))
        .collect()
}

/// Every pointer in `lines`. An arrow that is not between a backquoted
/// path and a backquoted name is an error, so that no pointer is skipped
/// for being mistyped.
fn pointers(lines: &[(usize, &str)]) -> Result<Vec<Pointer>, String> {
    let mut found = Vec::new();
    for &(line, text) in lines {
        if text.matches('→').count() != text.matches(ARROW).count() {
            return Err(format!(
                "line {line}: an arrow that is not between `path` and `name`: {text}"
            ));
        }
        for (at, _) in text.match_indices(ARROW) {
            let before = &text[..at];
            let after = &text[at + ARROW.len()..];
            let (Some(start), Some(end)) = (before.rfind('`'), after.find('`')) else {
                return Err(format!("line {line}: a pointer without its path or name: {text}"));
            };
            let (path, name) = (&before[start + 1..], &after[..end]);
            if path.is_empty() || path.contains(char::is_whitespace) || !is_name(name) {
                return Err(format!(
                    "line {line}: `{path}` → `{name}` is not a file and an identifier \
                     (or `Type::method`)"
                ));
            }
            found.push(Pointer {
                line,
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    Ok(found)
}

/// An identifier, or two joined by `::`.
fn is_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split("::").collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            part.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(is_ident_char)
        })
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the file exists and defines the name.
fn check(root: &Path, pointer: &Pointer) -> Result<(), String> {
    let file: PathBuf = root.join(&pointer.path);
    let source = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", pointer.path))?;
    match pointer.name.split_once("::") {
        Some((ty, method)) if !defines_method(&source, ty, method) => Err(format!(
            "no `fn {method}` in an `impl` or a `trait` of `{ty}` in {}",
            pointer.path
        )),
        None if !defines(&source, &pointer.name) => Err(format!(
            "no `fn`, `struct`, `enum`, `trait` or `impl` of `{}` in {}",
            pointer.name, pointer.path
        )),
        _ => Ok(()),
    }
}

/// The lines of `source` that are code, not comments.
fn code_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

/// The identifiers and keywords of `line`, in order.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !is_ident_char(c))
        .filter(|word| !word.is_empty())
        .collect()
}

/// Whether `line` declares `name` as a `keyword` (`fn name`, `struct name`...).
fn declares(line: &str, keywords: &[&str], name: &str) -> bool {
    words(line)
        .windows(2)
        .any(|pair| keywords.contains(&pair[0]) && pair[1] == name)
}

/// Whether `source` defines `name`: a function, a struct, an enum, a trait,
/// or the type of an `impl` block.
fn defines(source: &str, name: &str) -> bool {
    code_lines(source).any(|(_, line)| {
        declares(line, &["fn", "struct", "enum", "trait"], name) || impl_of(line) == Some(name)
    })
}

/// Whether `source` has an `impl` (inherent or of a trait) or a `trait`
/// declaration of `ty` with a `fn method` directly in it. Blocks are told
/// by rustfmt's layout: a block's items are indented one level more than
/// its first line, and it ends with a `}` at that line's indentation.
fn defines_method(source: &str, ty: &str, method: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    code_lines(source)
        .filter(|(_, line)| impl_of(line) == Some(ty) || declares(line, &["trait"], ty))
        .any(|(start, line)| {
            let indent = indentation(line);
            let end = format!("{}}}", &line[..indent]);
            lines[start + 1..]
                .iter()
                .take_while(|line| line.trim_end() != end)
                .any(|line| {
                    indentation(line) == indent + 4
                        && !line.trim_start().starts_with("//")
                        && declares(line, &["fn"], method)
                })
        })
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The type an `impl` line is for: `Relay` of `impl Relay {`, of
/// `impl std::fmt::Debug for Relay {` and of `impl<H> Drop for Finish<'_, H> {`.
fn impl_of(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("impl")?;
    let rest = match rest.strip_prefix('<') {
        Some(generics) => after_closing_angle(generics)?,
        None => rest.strip_prefix(' ')?,
    };
    let ty = rest.rsplit_once(" for ").map_or(rest, |(_, ty)| ty).trim_start();
    let ty = ty.trim_start_matches('&');
    let path_end = ty
        .find(|c: char| !(is_ident_char(c) || c == ':'))
        .unwrap_or(ty.len());
    let name = ty[..path_end].rsplit("::").next()?;
    (!name.is_empty()).then_some(name)
}

/// What follows the `>` that closes an already opened `<`.
fn after_closing_angle(text: &str) -> Option<&str> {
    let mut depth = 1;
    for (at, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return Some(&text[at + 1..]);
        }
    }
    None
}

/// The checks above on a source of known content: what they must find, and
/// what they must not.
#[test]
fn the_checks_find_definitions_and_report_what_is_missing() {
    let source = "\
/// fn documented_only() is not a definition.
pub struct Relay {
    store: u8,
}

impl Relay {
    pub async fn lead(&mut self) -> u8 {
        fn nested() {}
        self.store
    }
}

impl<H: Handler> std::fmt::Debug for Loop<H> {
    fn fmt(&self) {}
}

pub trait Handler: Send {
    fn handle(
        &self,
    );
}

pub(crate) fn run<H: Handler>(handler: H) {}
";
    for name in ["Relay", "Loop", "Handler", "run"] {
        assert!(defines(source, name), "{name}");
    }
    for name in ["documented_only", "Missing", "Rela"] {
        assert!(!defines(source, name), "{name}");
    }
    for (ty, method) in [("Relay", "lead"), ("Loop", "fmt"), ("Handler", "handle")] {
        assert!(defines_method(source, ty, method), "{ty}::{method}");
    }
    for (ty, method) in [
        ("Relay", "nested"),
        ("Relay", "fmt"),
        ("Loop", "lead"),
        ("Missing", "lead"),
    ] {
        assert!(!defines_method(source, ty, method), "{ty}::{method}");
    }

    let readme = "\
## Follow one payment

1. `a/src/api.rs` → `create_payment` — why; `b.rs` → `Relay::lead` too.
2. plain text

## Next
`c.rs` → `after_the_section`
";
    let lines = section(readme, "## Follow one payment");
    assert_eq!(
        pointers(&lines).expect("well formed"),
        [
            Pointer {
                line: 3,
                path: "a/src/api.rs".to_owned(),
                name: "create_payment".to_owned()
            },
            Pointer {
                line: 3,
                path: "b.rs".to_owned(),
                name: "Relay::lead".to_owned()
            },
        ]
    );
    for malformed in [
        "`a.rs` → create_payment",
        "a.rs → `create_payment`",
        "`a.rs` → `not a name`",
        "`a.rs` → `a::b::c`",
    ] {
        assert!(pointers(&[(1, malformed)]).is_err(), "{malformed}");
    }
}
