//! The README's walk through the code ("Follow one payment") and its table
//! of hazards ("Where the document stops") point at files and at what they
//! define, as `` `path` → `name` ``: a function, a type, a trait, or a
//! method as `Type::method`. Each pointer must still lead somewhere, so
//! that renaming or moving code fails here instead of leaving the reader at
//! a dead end. Every relative link of the README and of the pages under
//! `docs/` must lead to a file that is there, and its `#anchor` to a heading
//! of that file. Reads files only: no broker, no database.

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
    let tour = std::fs::read_to_string(root().join("xtask/src/study/tour.rs")).expect("tour.rs is readable");
    let lines: Vec<(usize, &str)> = tour
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(ARROW))
        .map(|(i, line)| (i + 1, line))
        .collect();
    let pointers = pointers(&lines).unwrap_or_else(|e| panic!("tour.rs: {e}"));
    assert!(pointers.len() >= 8, "tour.rs names the code of each of its steps");
    let stale = stale_pointers("xtask/src/study/tour.rs", &pointers);
    assert!(
        stale.is_empty(),
        "the tour points at code that is not there any more:\n  {}",
        stale.join("\n  ")
    );
}

/// The README and the pages under `docs/` link each other and files of the
/// repository: each relative link must lead to a file that is there, and
/// an `#anchor` to a heading of the page it names.
#[test]
fn every_relative_link_of_the_readme_and_the_docs_leads_somewhere() {
    let mut pages = vec![root().join("README.md")];
    pages.extend(markdown_files(&root().join("docs")));
    assert!(pages.len() > 1, "docs/ has pages");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let name = page.strip_prefix(root()).unwrap_or(page).display().to_string();
        for (line, target) in links(&text) {
            if let Err(why) = leads_somewhere(page, &target) {
                broken.push(format!("{name} line {line} ({target}): {why}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that lead nowhere; fix the link or the heading:\n  {}",
        broken.join("\n  ")
    );
}

/// The `.md` files under `dir`, at any depth.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    found
}

/// The lines of `text` outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((i + 1, line));
        }
    }
    lines
}

/// The target of every inline link (`[text](target)`) of `text` that is
/// neither a URL nor an address, with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (line, content) in prose(text) {
        for (at, _) in content.match_indices("](") {
            let rest = &content[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if !(target.contains("://") || target.starts_with("mailto:")) {
                found.push((line, target.to_owned()));
            }
        }
    }
    found
}

/// Whether a link of `page` to `target` (`path`, `path#anchor` or
/// `#anchor`) leads to a file that is there, and to one of its headings.
fn leads_somewhere(page: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = target
        .split_once('#')
        .map_or((target, None), |(p, a)| (p, Some(a)));
    let file = if path.is_empty() {
        page.to_owned()
    } else {
        page.parent().expect("a page is in a directory").join(path)
    };
    if !file.exists() {
        return Err(format!("no such file: {}", file.display()));
    }
    match anchor {
        Some(anchor) => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if anchors(&text).iter().any(|a| a == anchor) {
                Ok(())
            } else {
                Err(format!(
                    "no heading of {} has the anchor #{anchor}",
                    file.display()
                ))
            }
        }
        None => Ok(()),
    }
}

/// The anchors GitHub gives the headings of `text`: lower case, spaces as
/// `-`, every character but letters, digits, `-` and `_` left out; a
/// heading met again gets `-1`, `-2`...
fn anchors(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (_, line) in prose(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let times = seen.entry(slug.clone()).or_insert(0);
        found.push(if *times == 0 {
            slug
        } else {
            format!("{slug}-{times}")
        });
        *times += 1;
    }
    found
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

    let page = "\
# Measured\n\
\n\
## Faults under load: `cargo xtask faults`\n\
```sh\n\
# a shell comment, not a heading; [not](a-link.md)\n\
```\n\
## Three brokers: `cargo xtask kafka up --brokers 3`\n\
## Notes\n\
## Notes\n\
See [the faults](#faults-under-load-cargo-xtask-faults), [a page](docs/x.md) and [the web](https://example.org).\n";
    assert_eq!(
        anchors(page),
        [
            "measured",
            "faults-under-load-cargo-xtask-faults",
            "three-brokers-cargo-xtask-kafka-up---brokers-3",
            "notes",
            "notes-1"
        ]
    );
    assert_eq!(
        links(page),
        [
            (10, "#faults-under-load-cargo-xtask-faults".to_owned()),
            (10, "docs/x.md".to_owned())
        ]
    );
}
