//! Compiles the C++ bridge in `cpp/` and links FAISS statically.
//!
//! By default FAISS is built from source (the copy of FAISS that the `faiss-sys` crate
//! carries, fetched by Cargo as a build dependency) for the best SIMD level of the build
//! host, as `target-cpu=native` would. The build is kept under the target directory,
//! keyed by FAISS version and options, so it runs once, not on every rebuild of the crate
//! or for every profile. `FAISS_LIB_DIR` (+ `FAISS_INCLUDE_DIR`) link a FAISS ≥ 1.12 the
//! user built instead; `FAISS_OPT_LEVEL` (generic, avx2, avx512) overrides the level.

use std::env;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crate whose `faiss/` folder holds the FAISS source tree we build.
const SOURCE_CRATE: (&str, &str) = ("faiss-sys", "0.7.0");

/// Extra compiler flags of each FAISS level, from FAISS's own CMakeLists. The bridge is
/// compiled with them too, so that FAISS's inline code agrees on both sides.
const LEVELS: [(&str, &[&str]); 3] = [
    ("generic", &[]),
    ("avx2", &["-mavx2", "-mfma", "-mf16c", "-mpopcnt"]),
    (
        "avx512",
        &["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mpopcnt"],
    ),
];

struct Faiss {
    /// What the crate reports as its FAISS, e.g. "1.12.0 (avx512)".
    name: String,
    lib_dir: PathBuf,
    lib: String,
    include: PathBuf,
    flags: &'static [&'static str],
}

fn main() {
    for f in ["src/ffi.rs", "cpp/bridge.cpp", "cpp/bridge.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for v in ["FAISS_LIB_DIR", "FAISS_INCLUDE_DIR", "FAISS_OPT_LEVEL", "FAISS_SOURCE_DIR", "FAISS_CACHE_DIR"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let faiss = match env::var("FAISS_LIB_DIR") {
        Ok(dir) => user_build(dir),
        Err(_) => from_source(),
    };
    let faiss = match faiss {
        Ok(faiss) => faiss,
        Err(e) => {
            for line in e.lines() {
                println!("cargo::error={line}");
            }
            return;
        }
    };

    let mut bridge = cxx_build::bridge("src/ffi.rs");
    bridge
        .file("cpp/bridge.cpp")
        .include(&faiss.include)
        .std("c++17")
        .flag("-fopenmp")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2);
    for f in faiss.flags {
        bridge.flag(f);
    }
    bridge.compile("datafusion_faiss_bridge");

    println!("cargo:rustc-env=DFF_FAISS_BUILD={}", faiss.name);
    println!("cargo:rustc-link-search=native={}", faiss.lib_dir.display());
    println!("cargo:rustc-link-lib=static={}", faiss.lib);
    println!("cargo:rustc-link-lib=dylib=openblas");
    println!("cargo:rustc-link-lib=dylib=gomp");
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

fn user_build(dir: String) -> Result<Faiss, String> {
    let include = PathBuf::from(env::var("FAISS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into()));
    if !include.join("faiss/IndexIVF.h").exists() {
        return Err(format!(
            "FAISS_LIB_DIR is set but {}/faiss/IndexIVF.h is missing: set FAISS_INCLUDE_DIR",
            include.display()
        ));
    }
    // A CMake build of FAISS names its library after its level.
    let lib = ["faiss", "faiss_avx2", "faiss_avx512"]
        .into_iter()
        .find(|l| Path::new(&dir).join(format!("lib{l}.a")).exists())
        .ok_or_else(|| format!("no libfaiss.a, libfaiss_avx2.a or libfaiss_avx512.a in FAISS_LIB_DIR={dir}"))?;
    let flags = LEVELS.iter().find(|(l, _)| lib.ends_with(l)).map_or(&[][..], |(_, f)| *f);
    Ok(Faiss {
        name: format!("from FAISS_LIB_DIR={dir} ({lib})"),
        lib_dir: dir.into(),
        lib: lib.into(),
        include,
        flags,
    })
}

fn from_source() -> Result<Faiss, String> {
    let (source, origin) = source_dir()?;
    let version = version(&source)?;
    let level = match env::var("FAISS_OPT_LEVEL") {
        Ok(l) => l,
        Err(_) => best_level().into(),
    };
    let (level, flags) = LEVELS
        .iter()
        .find(|(l, _)| *l == level)
        .ok_or_else(|| format!("FAISS_OPT_LEVEL={level}: must be generic, avx2 or avx512"))?;
    let lib = if *level == "generic" { "faiss".to_string() } else { format!("faiss_{level}") };

    let cache = match env::var("FAISS_CACHE_DIR") {
        Ok(dir) => PathBuf::from(dir),
        // OUT_DIR is <target>/<profile>/build/<package>-<hash>/out: share one FAISS build
        // between profiles.
        Err(_) => PathBuf::from(env::var("OUT_DIR").unwrap()).ancestors().nth(4).unwrap().join("faiss"),
    }
    .join(format!("{version}-{level}"));
    let build = cache.join("build");
    let configure = [
        format!("-DFAISS_OPT_LEVEL={level}"),
        "-DFAISS_ENABLE_GPU=OFF".into(),
        "-DFAISS_ENABLE_PYTHON=OFF".into(),
        "-DFAISS_ENABLE_MKL=OFF".into(),
        "-DFAISS_ENABLE_C_API=OFF".into(),
        "-DFAISS_ENABLE_EXTRAS=OFF".into(),
        "-DBUILD_TESTING=OFF".into(),
        "-DBUILD_SHARED_LIBS=OFF".into(),
        "-DCMAKE_POSITION_INDEPENDENT_CODE=ON".into(),
        "-DCMAKE_BUILD_TYPE=Release".into(),
    ];
    // What the library was built from: a different source, option or compiler rebuilds it.
    // The source crate is named, not its path, which changes with the Cargo home.
    let stamp = format!("{origin}\n{}\n{}\n", configure.join(" "), compiler_version());
    let lib_file = build.join("faiss").join(format!("lib{lib}.a"));

    fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    // Two profiles building at once must not build into one folder together.
    let lock = File::create(cache.join(".lock")).map_err(|e| format!("{}: {e}", cache.display()))?;
    lock.lock().map_err(|e| format!("cannot lock {}: {e}", cache.display()))?;
    let stamp_file = cache.join("stamp");
    if !(lib_file.exists() && fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)) {
        println!("cargo:warning=building FAISS {version} ({level}) in {}: a few minutes, once", build.display());
        let _ = fs::remove_dir_all(&build);
        let _ = fs::remove_file(&stamp_file);
        let jobs = env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
        run(Command::new("cmake").arg("-S").arg(&source).arg("-B").arg(&build).args(&configure))?;
        run(Command::new("cmake").arg("--build").arg(&build).args(["--target", &lib, "--parallel", &jobs]))?;
        fs::write(&stamp_file, &stamp).map_err(|e| format!("{}: {e}", stamp_file.display()))?;
    }
    let name = format!("{version} ({level})");
    Ok(Faiss { name, lib_dir: lib_file.parent().unwrap().into(), lib, include: source, flags })
}

/// The FAISS source: `FAISS_SOURCE_DIR`, or the `faiss/` folder of the source crate as
/// Cargo extracted it (Cargo downloads build dependencies before running this script).
///
/// Cargo does not tell a build script where its build dependencies are, so we ask it
/// about a throwaway package with the source crate as its only dependency. Asking about
/// our own workspace would resolve every crate of it, dev-dependencies included, which a
/// build of one binary never downloaded: `--offline` fails on a new machine.
/// Returns the folder and what names it in the build's stamp.
fn source_dir() -> Result<(PathBuf, String), String> {
    if let Ok(dir) = env::var("FAISS_SOURCE_DIR") {
        return Ok((dir.clone().into(), dir));
    }
    let (name, version) = SOURCE_CRATE;
    let probe = PathBuf::from(env::var("OUT_DIR").unwrap()).join("source-probe");
    fs::create_dir_all(probe.join("src")).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let manifest = format!(
        "[package]\nname = \"faiss-source-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n{name} = {{ version = \"={version}\", default-features = false }}\n\n\
         # Not a member of the workspace this folder sits in.\n[workspace]\n"
    );
    for (file, text) in [("Cargo.toml", manifest.as_str()), ("src/lib.rs", "")] {
        fs::write(probe.join(file), text).map_err(|e| format!("{}: {e}", probe.join(file).display()))?;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .current_dir(&probe)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot find the FAISS source ({name} {version}, a build dependency): cargo metadata failed: {}\n\
             (set FAISS_SOURCE_DIR to a FAISS source tree to skip this look-up)",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name && p["version"] == version)
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| format!("{name} {version} is not among the packages Cargo resolved"))?;
    Ok((Path::new(manifest).parent().unwrap().join("faiss"), format!("{name} {version}")))
}

/// FAISS's version, from `project(faiss VERSION x.y.z` in its CMakeLists.txt.
fn version(source: &Path) -> Result<String, String> {
    let file = source.join("CMakeLists.txt");
    let text =
        fs::read_to_string(&file).map_err(|e| format!("{}: {e} (is this a FAISS source tree?)", file.display()))?;
    let after = text.split_once("project(faiss").map(|(_, rest)| rest).unwrap_or_default();
    after
        .split_whitespace()
        .skip_while(|w| *w != "VERSION")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no `project(faiss VERSION ...)`", file.display()))
}

/// The best level the build host runs; generic when building for another machine.
fn best_level() -> &'static str {
    if env::var("HOST") != env::var("TARGET") {
        return "generic";
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c") && has!("popcnt");
        let avx512 = has!("avx512f") && has!("avx512cd") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw");
        if avx2 && avx512 {
            return "avx512";
        }
        if avx2 {
            return "avx2";
        }
    }
    "generic"
}

fn compiler_version() -> String {
    Command::new(env::var("CXX").unwrap_or_else(|_| "c++".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out =
        cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e} (is cmake installed? run scripts/setup.sh)"))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    Err(format!("{cmd:?} failed:\n{}\n{}", tail(&out.stdout), tail(&out.stderr)))
}
