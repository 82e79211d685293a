//! Makes sure the web dashboard bundle exists before `src/dashboard.rs` embeds it.
//!
//! `rust-embed` refuses to compile when its folder is missing, and the bundle
//! (`dashboard/dist`) is generated, not committed. So this script:
//!
//! 1. decides whether `dashboard/dist/index.html` is missing, a placeholder, or older than any
//!    dashboard input (`src/`, `public/`, `index.html`, `package.json`, `package-lock.json`,
//!    `vite.config.ts`, `tsconfig.json`);
//! 2. if so and `npm` is installed, runs `npm ci` (only when `node_modules` is missing or older
//!    than `package-lock.json`) and `npm run build` in `dashboard/`;
//! 3. if `npm` is missing, or the build fails, keeps an existing bundle or writes a one-page
//!    placeholder that says how to build the dashboard, and emits a `cargo:warning` — so
//!    `cargo build` never fails for lack of Node. Set `LOCKSTEP_REQUIRE_DASHBOARD=1` (CI does)
//!    to make that a hard error instead; `LOCKSTEP_SKIP_DASHBOARD_BUILD=1` skips npm entirely
//!    (a placeholder is still written when there is no bundle).
//!
//! Trade-off: the bundle is written to `dashboard/dist`, outside `OUT_DIR`, because that is
//! where Vite, `npm run dev` and the e2e test expect it. Because `dist/` is watched too, the
//! first cargo run after a dashboard rebuild re-runs this script once (it then finds the bundle
//! fresh and does nothing).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Marker the placeholder page carries, so a later build with Node replaces it.
const PLACEHOLDER_MARK: &str = "<!-- lockstep-dashboard-placeholder -->";

/// Everything under `dashboard/` that the bundle is built from.
const INPUTS: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dashboard = manifest_dir.join("..").join("..").join("dashboard");
    let dist = dashboard.join("dist");
    let index = dist.join("index.html");

    println!("cargo:rerun-if-changed=build.rs");
    for input in INPUTS {
        println!("cargo:rerun-if-changed={}", dashboard.join(input).display());
    }
    println!("cargo:rerun-if-changed={}", dist.display());
    for var in [
        "LOCKSTEP_SKIP_DASHBOARD_BUILD",
        "LOCKSTEP_REQUIRE_DASHBOARD",
        "NPM",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let require = env_flag("LOCKSTEP_REQUIRE_DASHBOARD");
    let state = bundle_state(&dashboard, &index);
    if state == BundleState::Fresh {
        return;
    }
    let why = match state {
        BundleState::Missing => "dashboard/dist/index.html is missing",
        BundleState::Placeholder => "dashboard/dist holds only the placeholder page",
        BundleState::Stale => "dashboard sources changed since the last bundle",
        BundleState::Fresh => unreachable!(),
    };

    let outcome = if env_flag("LOCKSTEP_SKIP_DASHBOARD_BUILD") {
        Err("LOCKSTEP_SKIP_DASHBOARD_BUILD is set".to_owned())
    } else {
        build_bundle(&dashboard)
    };

    match outcome {
        Ok(()) if index.is_file() => {}
        Ok(()) => fail_or_warn(
            require,
            &format!(
                "`npm run build` succeeded but {} was not written",
                index.display()
            ),
            &dist,
            state,
        ),
        Err(e) => fail_or_warn(
            require,
            &format!("{why}, and it could not be built: {e}"),
            &dist,
            state,
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BundleState {
    Missing,
    Placeholder,
    Stale,
    Fresh,
}

fn bundle_state(dashboard: &Path, index: &Path) -> BundleState {
    let Ok(meta) = fs::metadata(index) else {
        return BundleState::Missing;
    };
    if fs::read_to_string(index).is_ok_and(|s| s.contains(PLACEHOLDER_MARK)) {
        return BundleState::Placeholder;
    }
    let built = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let newest_input = INPUTS
        .iter()
        .filter_map(|i| newest_mtime(&dashboard.join(i)))
        .max();
    match newest_input {
        Some(t) if t > built => BundleState::Stale,
        _ => BundleState::Fresh,
    }
}

/// Newest modification time of a file, or of any file below a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .chain(meta.modified().ok())
        .max()
}

fn npm_program() -> String {
    env::var("NPM").unwrap_or_else(|_| {
        if cfg!(windows) {
            "npm.cmd".into()
        } else {
            "npm".into()
        }
    })
}

fn build_bundle(dashboard: &Path) -> Result<(), String> {
    let npm = npm_program();
    match Command::new(&npm).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => {
            return Err(format!(
                "`{npm}` is not installed (install Node.js 20+ with npm)"
            ));
        }
    }
    let lock = dashboard.join("package-lock.json");
    let installed = dashboard.join("node_modules").join(".package-lock.json");
    let needs_install = match (
        fs::metadata(&installed).and_then(|m| m.modified()),
        fs::metadata(&lock).and_then(|m| m.modified()),
    ) {
        (Ok(installed), Ok(lock)) => lock > installed,
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    };
    if needs_install {
        run(&npm, &["ci", "--no-audit", "--no-fund"], dashboard)?;
    }
    run(&npm, &["run", "build"], dashboard)
}

fn run(npm: &str, args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new(npm)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("could not run `{npm} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "`{npm} {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        tail.join("\n")
    ))
}

fn env_flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Reports a bundle that could not be built: a hard error under `LOCKSTEP_REQUIRE_DASHBOARD`,
/// otherwise warnings, plus a placeholder page when there is no bundle at all.
fn fail_or_warn(require: bool, message: &str, dist: &Path, state: BundleState) {
    if require {
        eprintln!(
            "error: the dashboard bundle is required (LOCKSTEP_REQUIRE_DASHBOARD is set) but {message}"
        );
        std::process::exit(1);
    }
    for line in message.lines() {
        println!("cargo:warning={line}");
    }
    if state != BundleState::Missing {
        println!("cargo:warning=keeping the existing dashboard/dist");
        return;
    }
    match write_placeholder(dist) {
        Ok(()) => println!(
            "cargo:warning=serving a placeholder page at /; build the dashboard with `cd dashboard && npm ci && npm run build`"
        ),
        Err(e) => println!("cargo:warning=could not write the placeholder dashboard: {e}"),
    }
}

fn write_placeholder(dist: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dist)?;
    fs::write(
        dist.join("index.html"),
        format!(
            "<!doctype html>\n{PLACEHOLDER_MARK}\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Lockstep (dashboard not built)</title></head>\n\
             <body style=\"font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto\">\n\
             <h1>The dashboard was not built</h1>\n\
             <p>This lockstep-server was compiled without the web dashboard because Node.js/npm was not available \
             (or the build failed; see the cargo warnings).</p>\n\
             <p>Install Node.js 20 or newer with npm, then either run <code>cargo build</code> again (the build script runs \
             <code>npm ci</code> and <code>npm run build</code> in <code>dashboard/</code>) or build it by hand:</p>\n\
             <pre>cd dashboard\nnpm ci\nnpm run build</pre>\n\
             <p>The server's API works without it: <a href=\"/status\">/status</a>.</p>\n</body></html>\n"
        ),
    )
}
