//! Compiles the C++ bridge in `cpp/` and links Debian's static FAISS.

use std::path::Path;

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

fn main() {
    let faiss_dir = std::env::var("FAISS_LIB_DIR").unwrap_or_else(|_| LIB_DIR.to_string());
    let faiss_include = std::env::var("FAISS_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".to_string());
    if !Path::new(&faiss_dir).join("libfaiss.a").exists()
        || !Path::new(&faiss_include).join("faiss/IndexIVF.h").exists()
    {
        println!(
            "cargo::error=FAISS not found (no {faiss_dir}/libfaiss.a or \
             {faiss_include}/faiss/IndexIVF.h): run `make setup` or \
             `apt-get install libfaiss-dev libopenblas-dev`"
        );
        return;
    }

    cxx_build::bridge("src/ffi.rs")
        .file("cpp/bridge.cpp")
        .include(&faiss_include)
        .std("c++17")
        .flag("-fopenmp")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("datafusion_faiss_bridge");

    println!("cargo:rustc-link-search=native={faiss_dir}");
    println!("cargo:rustc-link-lib=static=faiss");
    println!("cargo:rustc-link-lib=dylib=openblas");
    println!("cargo:rustc-link-lib=dylib=gomp");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    for f in ["src/ffi.rs", "cpp/bridge.cpp", "cpp/bridge.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=FAISS_LIB_DIR");
    println!("cargo:rerun-if-env-changed=FAISS_INCLUDE_DIR");
}
