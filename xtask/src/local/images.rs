//! `cargo xtask images`: the images `docker-compose.yml`, the `Dockerfile`
//! and the testcontainers suite name, built locally for machines that reach
//! no image registry.
//!
//! They are stand-ins for the official images, built from what the no-Docker
//! path already uses, and tagged with the official names:
//!
//! | image | built from |
//! |---|---|
//! | `debian:bookworm-slim` | `debootstrap --variant=minbase bookworm`, imported |
//! | `rust:1.95-bookworm` | that, Debian's build tools, and this machine's Rust toolchain |
//! | `apache/kafka:<version>` | that, Debian's JRE, and the broker's jars from Maven Central (`xtask/kafka/pom.xml`) |
//! | `postgres:15-bookworm` | that, and Debian's `postgresql-15` |
//! | `jaegertracing/jaeger:<version>` | that, and Jaeger's binary built from its Go module ([`crate::local::jaeger`]) |
//! | `prom/prometheus:<version>` | that, and Debian's `prometheus` |
//!
//! The definitions are under `docker/images/`. Each image is labelled with a
//! digest of what it was built from and rebuilt only when that changes, so a
//! second run takes seconds. An image of the same name that xtask did not
//! build (a real one, pulled) is left alone.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::local::broker::LocalBroker;
use crate::local::engine::{self, Engine};
use crate::local::jaeger;
use crate::local::process::printed;

/// The label that holds the digest of what a stand-in was built from.
const LABEL: &str = "eda-rust.stand-in";

pub const DEBIAN: &str = "docker.io/library/debian:bookworm-slim";
pub const RUST: &str = "docker.io/library/rust:1.95-bookworm";
/// `apache/kafka` of the release everything runs.
pub fn kafka() -> String {
    format!("docker.io/apache/kafka:{}", kafka_ops::KAFKA_VERSION)
}
pub const POSTGRES: &str = "docker.io/library/postgres:15-bookworm";
/// Compose's observability profile: the trace viewer (the release
/// [`crate::local::jaeger::MODULE_VERSION`] is) and the metrics server.
pub const JAEGER: &str = "docker.io/jaegertracing/jaeger:2.12.0";
pub const PROMETHEUS: &str = "docker.io/prom/prometheus:v2.42.0";

/// The Debian release of every stand-in, and where debootstrap fetches it.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Where Debian's `update-ca-certificates` takes local authorities from.
const LOCAL_AUTHORITIES: &str = "/usr/local/share/ca-certificates";
const SOURCES: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
";

/// Builds whichever of the six images is missing or out of date.
pub async fn build(root: &Path) -> Result<Engine> {
    let engine = Engine::ensure(root).await?;
    let work = root.join("target/xtask/images");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    debian(&engine, &work).await?;
    let on = Base {
        engine: &engine,
        root,
        work: &work,
        id: image_id(&engine, DEBIAN).await?,
    };

    let toolchain = toolchain()?;
    let rust_version = run_output(std::process::Command::new("rustc").arg("-vV"))?;
    if !rust_version.contains("release: 1.95.") {
        bail!(
            "the Dockerfile builds on rust:1.95-bookworm, and this machine's toolchain is not 1.95:\n{rust_version}"
        );
    }
    derived(&on, "rust", RUST, &rust_version, |context| {
        copy_tree(&toolchain, &context.join("toolchain"))?;
        // The toolchain's documentation is most of its size and no build reads it.
        remove_tree(&context.join("toolchain/share/doc"))
    })
    .await?;

    let classpath = LocalBroker::new(root).classpath()?;
    let jars: Vec<PathBuf> = classpath.split(':').map(PathBuf::from).collect();
    let jar_names: Vec<String> = jars
        .iter()
        .filter_map(|jar| jar.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    derived(&on, "kafka", &kafka(), &jar_names.join("\n"), |context| {
        let libs = context.join("libs");
        std::fs::create_dir_all(&libs)?;
        for jar in &jars {
            let name = jar.file_name().context("a jar without a name")?;
            std::fs::copy(jar, libs.join(name)).with_context(|| format!("cannot copy {}", jar.display()))?;
        }
        Ok(())
    })
    .await?;

    derived(&on, "postgres", POSTGRES, "", |_| Ok(())).await?;

    let binary = jaeger::binary(root)?;
    derived(&on, "jaeger", JAEGER, jaeger::MODULE_VERSION, |context| {
        std::fs::copy(&binary, context.join("jaeger"))?;
        Ok(())
    })
    .await?;
    derived(&on, "prometheus", PROMETHEUS, "", |_| Ok(())).await?;
    Ok(engine)
}

/// What the images other than Debian's are built on and with.
struct Base<'a> {
    engine: &'a Engine,
    root: &'a Path,
    /// Where their build contexts are put together.
    work: &'a Path,
    /// The image id of [`DEBIAN`].
    id: String,
}

/// Whether `tag` need not be built: the engine has it, built from the same
/// `digest`, or an image of that name that xtask did not build.
async fn built_already(engine: &Engine, tag: &str, digest: &str) -> bool {
    match engine.image_label(tag, LABEL).await {
        Some(built) if built == digest => eprintln!("xtask: {tag} is up to date"),
        Some(built) if built.is_empty() => {
            eprintln!("xtask: {tag} is there and was not built by xtask; leaving it alone");
        }
        _ => return false,
    }
    true
}

/// `debian:bookworm-slim`, from debootstrap, unless the engine has one
/// built from the same.
///
/// It carries the certificate authorities this machine's administrator added
/// (`/usr/local/share/ca-certificates/`, such as a proxy's): any image that
/// installs Debian's `ca-certificates` then trusts what this machine trusts,
/// and its builds can fetch from the registries this machine can.
async fn debian(engine: &Engine, work: &Path) -> Result<()> {
    let authorities = local_authorities()?;
    let mut hasher = DefaultHasher::new();
    (SUITE, MIRROR, SOURCES).hash(&mut hasher);
    for authority in &authorities {
        std::fs::read(authority)?.hash(&mut hasher);
    }
    let digest = format!("{:016x}", hasher.finish());
    if built_already(engine, DEBIAN, &digest).await {
        return Ok(());
    }
    engine::ensure_packages(&[("debootstrap", "debootstrap")])?;
    let rootfs = work.join("debian-rootfs");
    remove_tree(&rootfs)?;
    eprintln!("xtask: building {DEBIAN}: debootstrap --variant=minbase {SUITE} (about a minute)");
    let output = std::process::Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&rootfs)
        .arg(MIRROR)
        .stdin(Stdio::null())
        .output()
        .context("cannot run debootstrap")?;
    if !output.status.success() {
        bail!(
            "debootstrap failed ({}):\n{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stdout), 20)
        );
    }
    // As in the official image: updates and security updates, no package
    // lists or downloaded packages.
    std::fs::write(rootfs.join("etc/apt/sources.list"), SOURCES)?;
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        clear_files(&rootfs.join(dir))?;
    }
    let trusted = rootfs.join(LOCAL_AUTHORITIES.trim_start_matches('/'));
    std::fs::create_dir_all(&trusted)?;
    for authority in &authorities {
        let name = authority.file_name().context("a certificate without a name")?;
        std::fs::copy(authority, trusted.join(name))?;
    }

    let mut tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let status = engine
        .command()
        .args([
            "import",
            "--change",
            "CMD [\"bash\"]",
            "--change",
            &format!("LABEL {LABEL}={digest}"),
            "-",
            DEBIAN,
        ])
        .stdin(Stdio::from(tar.stdout.take().context("tar's output")?))
        .stdout(Stdio::null())
        .status()
        .await
        .context("cannot import the root file system")?;
    let packed = tar.wait()?;
    if !status.success() || !packed.success() {
        bail!("importing {DEBIAN} failed (tar: {packed}, import: {status})");
    }
    remove_tree(&rootfs)
}

/// The certificates of the authorities this machine's administrator added.
fn local_authorities() -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(LOCAL_AUTHORITIES) {
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "crt") && path.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Builds `tag` on `base` from `docker/images/<name>/` plus what
/// `add_payload` puts in its context, unless the image was built from the
/// same before.
async fn derived(
    base: &Base<'_>,
    name: &str,
    tag: &str,
    payload: &str,
    add_payload: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let definition = base.root.join("docker/images").join(name);
    let digest = digest(&definition, &base.id, payload)?;
    if built_already(base.engine, tag, &digest).await {
        return Ok(());
    }

    let context = base.work.join(name);
    remove_tree(&context)?;
    copy_tree(&definition, &context)?;
    add_payload(&context)?;
    eprintln!("xtask: building {tag} from {}", definition.display());
    let status = base
        .engine
        .command()
        .args(["build", "--label", &format!("{LABEL}={digest}"), "--tag", tag])
        .arg(&context)
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot build {tag}"))?;
    if !status.success() {
        bail!("building {tag} failed ({status})");
    }
    // The context holds copies (a toolchain, jars); the image has them now.
    remove_tree(&context)
}

/// A digest of an image's definition (every file's path and content), its
/// base image and its payload.
fn digest(definition: &Path, base: &str, payload: &str) -> Result<String> {
    let mut hasher = DefaultHasher::new();
    base.hash(&mut hasher);
    payload.hash(&mut hasher);
    let mut files = Vec::new();
    collect_files(definition, &mut files)?;
    files.sort();
    for file in files {
        file.strip_prefix(definition).unwrap_or(&file).hash(&mut hasher);
        std::fs::read(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// The image id of `image`.
async fn image_id(engine: &Engine, image: &str) -> Result<String> {
    let id = printed(engine.cli, &["image", "inspect", "--format", "{{.Id}}", image]).await;
    Ok(id
        .with_context(|| format!("{image} is missing"))?
        .trim()
        .to_owned())
}

/// The sysroot of the toolchain that builds this workspace.
fn toolchain() -> Result<PathBuf> {
    let sysroot = run_output(std::process::Command::new("rustc").args(["--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// Copies the tree `from` to `to`: hard links where the file system allows
/// (the toolchain is half a gigabyte), else copies.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let linked = std::process::Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .stderr(Stdio::null())
        .status()?;
    if linked.success() {
        return Ok(());
    }
    remove_tree(to)?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    if !copied.success() {
        bail!("cannot copy {} to {}", from.display(), to.display());
    }
    Ok(())
}

/// Removes the tree at `path`, if there is one.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Removes the files directly in `dir` (not the directories, which apt expects).
fn clear_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What `command` prints, if it succeeds.
pub(crate) fn run_output(command: &mut std::process::Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The images xtask builds are the ones compose, the Dockerfile and the
    /// testcontainers suite name.
    #[test]
    fn the_stand_ins_are_the_images_the_project_names() {
        let root = crate::workspace_root();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
        let short = |image: &str| {
            image
                .trim_start_matches("docker.io/library/")
                .trim_start_matches("docker.io/")
                .to_owned()
        };
        let compose = read("docker-compose.yml");
        for image in [&kafka(), POSTGRES, JAEGER, PROMETHEUS] {
            assert!(
                compose.contains(&format!("image: {}", short(image))),
                "docker-compose.yml runs {}",
                short(image)
            );
        }
        let dockerfile = read("Dockerfile");
        for image in [RUST, DEBIAN] {
            assert!(
                dockerfile.contains(&format!("FROM {}", short(image))),
                "the Dockerfile builds on {}",
                short(image)
            );
        }
        // testcontainers' broker is `KAFKA_IMAGE:kafka_ops::KAFKA_VERSION`.
        let testkit = read("libs/testkit/src/lib.rs");
        let (name, tag) = short(POSTGRES)
            .split_once(':')
            .map(|(n, t)| (n.to_owned(), t.to_owned()))
            .expect("a tag");
        for quoted in ["apache/kafka", &name, &tag] {
            assert!(
                testkit.contains(&format!("\"{quoted}\"")),
                "the tests run {quoted}"
            );
        }
    }

    #[test]
    fn the_digest_follows_the_definition_the_base_and_the_payload() {
        let dir = std::env::temp_dir().join(format!("xtask-digest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        std::fs::write(dir.join("Dockerfile"), "FROM debian").expect("write");
        std::fs::write(dir.join("sub/run"), "#!/bin/sh").expect("write");
        let first = digest(&dir, "base", "payload").expect("digest");
        assert_eq!(first, digest(&dir, "base", "payload").expect("digest"));
        assert_ne!(first, digest(&dir, "another base", "payload").expect("digest"));
        assert_ne!(first, digest(&dir, "base", "another payload").expect("digest"));
        std::fs::write(dir.join("sub/run"), "#!/bin/bash").expect("write");
        assert_ne!(first, digest(&dir, "base", "payload").expect("digest"));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
