//! Real clients of other ecosystems, installed when missing: Python packages
//! in a virtual environment and npm packages in a folder, both under the
//! build's `target/` directory (never in the system). The first test that
//! needs one installs it; the others wait for that (a lock file), so parallel
//! tests do not race on `pip` or `npm`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The build's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
}

/// The path of `program` in the test virtual environment, with `packages`
/// (pip requirement strings, pinned) installed there first if missing.
pub fn python_tool(program: &str, packages: &[&str]) -> Result<PathBuf> {
    let bin = venv_dir().join("bin").join(program);
    venv_install(|| bin.exists(), packages)
        .with_context(|| format!("{} was not installed by {packages:?}", bin.display()))?;
    Ok(bin)
}

/// The virtual environment's `python3`, able to import `module`, with
/// `packages` (pip requirement strings, pinned) installed first if it
/// cannot. For libraries, which put no program of their own in `bin/`.
pub fn python_module(module: &str, packages: &[&str]) -> Result<PathBuf> {
    let python = venv_dir().join("bin").join("python3");
    let imports = || {
        python.exists()
            && Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
    };
    venv_install(imports, packages)
        .with_context(|| format!("python cannot import {module} after installing {packages:?}"))?;
    Ok(python)
}

fn venv_dir() -> PathBuf {
    target_dir().join("py-venv")
}

/// Installs `packages` into the test virtual environment (made first if
/// missing) unless `ready` already holds; fails if it does not hold after.
/// One installer at a time, across test processes too.
fn venv_install(ready: impl Fn() -> bool, packages: &[&str]) -> Result<()> {
    if ready() {
        return Ok(());
    }
    std::fs::create_dir_all(target_dir())?;
    let _guard = FileLock::acquire(&target_dir().join("py-venv.lock"))?;
    if ready() {
        return Ok(());
    }
    let venv = venv_dir();
    if !venv.join("bin").join("pip").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv (Debian: python3-venv)")?;
    }
    run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
        &format!("pip install {}", packages.join(" ")),
    )?;
    if !ready() {
        bail!("pip install {} succeeded but left it missing", packages.join(" "));
    }
    Ok(())
}

/// The `node_modules` folder of the npm project `tests/<project>/` (its
/// `package.json` and `package-lock.json`, pinned), installed with `npm ci`
/// under `target/npm/<project>/` first if missing or out of date.
pub fn npm_project(project: &str) -> Result<PathBuf> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(project);
    let dir = target_dir().join("npm").join(project);
    let modules = dir.join("node_modules");
    let lock_text = std::fs::read(source.join("package-lock.json"))
        .with_context(|| format!("tests/{project}/package-lock.json"))?;
    // The installed lock names what is installed: a changed lock reinstalls.
    let installed = || {
        std::fs::read(modules.join(".package-lock.json")).is_ok()
            && std::fs::read(dir.join("package-lock.json")).ok().as_ref() == Some(&lock_text)
    };
    if installed() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir)?;
    let _guard = FileLock::acquire(&target_dir().join("npm.lock"))?;
    if installed() {
        return Ok(modules);
    }
    std::fs::copy(source.join("package.json"), dir.join("package.json"))?;
    std::fs::write(dir.join("package-lock.json"), &lock_text)?;
    run(
        Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        &format!("npm ci in target/npm/{project} (Debian: nodejs, npm)"),
    )?;
    Ok(modules)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!("{what} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// An exclusive lock on a file, released when dropped.
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn acquire(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        file.lock().with_context(|| format!("lock {}", path.display()))?;
        Ok(Self(file))
    }
}
