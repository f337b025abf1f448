//! Build script of the wdk-sys stand-in (tests/check-glue only).
//!
//! 1. Generates `types.rs`, `constants.rs` and `ntddk.rs` with bindgen from mingw-w64's
//!    `ddk/ntifs.h`, `ntddk.h`, `ntstrsafe.h` — the header list of wdk-build's
//!    `Config::base_headers` for WDM — with the settings of wdk-build's
//!    `BuilderExt::wdk_default` and the three code-generation splits of wdk-sys's
//!    `build.rs` (`TYPES`, `VARS`, everything else). See docs/wdk-api-checked.md.
//! 2. Generates `ntstatus.rs`: every `STATUS_*` of mingw's ntstatus.h as an `NTSTATUS`.
//! 3. Lays out the link-search directory the real build gets from the WDK: mingw's import
//!    libraries as `ntoskrnl.lib` / `hal.lib`, an import library for the hand-declared
//!    routines (`declared.def`), and the stand-ins for the WDK's static `aux_klib.lib` and
//!    `wdmsec.lib` (compiled from `wdk-libs/*.c` with clang in MSVC mode).
//!
//! Inputs (environment, all optional): `IOSV_MINGW_INCLUDE` (default
//! `/usr/share/mingw-w64/include`), `IOSV_MINGW_LIB` (default
//! `/usr/x86_64-w64-mingw32/lib`), `IOSV_CLANG` (`clang`), `IOSV_LLVM_LIB` (`llvm-lib`),
//! `IOSV_LLVM_DLLTOOL` (`llvm-dlltool`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bindgen::{Builder, CodegenConfig, EnumVariation, Formatter, RustEdition, RustTarget};

/// wdk-build's `Config::base_headers()` for WDM and KMDF, in its order.
const BASE_HEADERS: [&str; 3] = ["ntifs.h", "ntddk.h", "ntstrsafe.h"];

/// wdk-build's `preprocessor_definitions()` for AMD64 + WDM. No `NTDDI_VERSION` (the kit's
/// newest applies), no `DBG`.
const DEFINITIONS: [&str; 4] = ["_WIN64", "_AMD64_", "AMD64", "_KERNEL_MODE"];

/// wdk-build's `wdk_bindgen_compiler_flags()`.
const COMPILER_FLAGS: [&str; 15] = [
    "-fms-compatibility",
    "-fms-extensions",
    "-fdelayed-template-parsing",
    "--warn-=no-nonportable-include-path",
    "--warn-=no-pragma-pack",
    "--warn-=no-ignored-attributes",
    "--warn-=no-ignored-pragma-intrinsic",
    "--warn-=no-visibility",
    "--warn-=no-switch",
    "--warn-=no-comment",
    "--warn-=no-deprecated-declarations",
    "--warn-=no-invalid-token-paste",
    "--warn-=no-microsoft",
    // Not wdk-build's: mingw's headers disable `__attribute__` unless the compiler claims
    // to be GCC, which breaks clang's own intrinsic headers (vector types) that wdm.h pulls
    // in. Claiming GCC 4.8 makes mingw use its GCC spellings of the same declarations.
    "--define-macro=__GNUC__=4",
    "--define-macro=__GNUC_MINOR__=8",
];

/// wdk-build's blocklist (the items that exist in WDM headers; the USB/WHEA ones have no
/// effect here but are kept so the list reads the same), plus the names the WDK headers do
/// not declare but mingw's ntifs.h does: the glue declares those itself, as it must for
/// the real wdk-sys, so a binding here would hide a missing declaration.
const BLOCKLIST: [&str; 13] = [
    // wdk-build: deprecated pool routines.
    "ExAllocatePoolWithTag",
    "ExAllocatePoolWithQuotaTag",
    "ExAllocatePoolWithTagPriority",
    "ExAllocatePool",
    // wdk-build: layouts bindgen gets wrong or cannot generate.
    ".*MCG_CAP(?:__bindgen.*)?",
    ".*WHEA_XPF_MCA_SECTION",
    ".*WHEA_ARM_BUS_ERROR(?:__bindgen.*)?",
    ".*WHEA_ARM_PROCESSOR_ERROR",
    ".*WHEA_ARM_CACHE_ERROR",
    // Not in the WDK's kernel headers (exported by ntoskrnl; mingw declares them).
    "ObReferenceObjectByName",
    "IoDriverObjectType",
    "ZwQuerySystemInformation",
    // Shaped differently by mingw; declared by hand with the WDK's prototype
    // (src/declared.rs).
    "MmMapLockedPagesSpecifyCache",
];

fn env_path(name: &str, default: &str) -> PathBuf {
    println!("cargo::rerun-if-env-changed={name}");
    env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn env_tool(name: &str, default: &str) -> String {
    println!("cargo::rerun-if-env-changed={name}");
    env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `BuilderExt::wdk_default` for an AMD64 WDM driver, over the mingw headers.
fn wdk_default(include: &Path, resource_dir: &str) -> Builder {
    let mut builder = Builder::default()
        .use_core()
        .derive_default(true)
        .generate_cstr(true)
        .detect_include_paths(false)
        .clang_arg("--target=x86_64-pc-windows-msvc")
        .clang_arg("-fno-builtin")
        .clang_arg(format!(
            "--include-directory={}",
            include.join("ddk").display()
        ))
        .clang_arg(format!("--include-directory={}", include.display()))
        // libclang (unlike the clang binary) does not find its own headers here.
        .clang_arg(format!("-isystem{resource_dir}/include"))
        .clang_args(DEFINITIONS.iter().map(|d| format!("--define-macro={d}")))
        .clang_args(COMPILER_FLAGS)
        .opaque_type("_KGDTENTRY64")
        .opaque_type("_KIDTENTRY64")
        .must_use_type("NTSTATUS")
        .must_use_type("HRESULT")
        .default_enum_style(EnumVariation::ModuleConsts)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .formatter(Formatter::Prettyplease)
        // wdk-build uses the building crate's MSRV (wdk-sys 0.5.2: 1.91) and edition (2024).
        .rust_target(RustTarget::stable(91, 0).unwrap_or_else(|_| RustTarget::nightly()))
        .rust_edition(RustEdition::Edition2024);
    for item in BLOCKLIST {
        builder = builder.blocklist_item(item);
    }
    let input: String = BASE_HEADERS
        .iter()
        .map(|h| format!("#include \"{h}\"\n"))
        .collect();
    builder.header_contents("wdk-input.h", &input)
}

fn generate(
    (include, resource_dir): (&Path, &str),
    out: &Path,
    file: &str,
    codegen: CodegenConfig,
    raw: Option<&str>,
) {
    let mut builder = wdk_default(include, resource_dir).with_codegen_config(codegen);
    if let Some(raw) = raw {
        builder = builder.raw_line(raw);
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed for {file}: {e}"));
    bindings
        .write_to_file(out.join(file))
        .unwrap_or_else(|e| panic!("write {file}: {e}"));
}

/// `STATUS_*` from ntstatus.h (`#define STATUS_X ((NTSTATUS)0x...L)`) as `NTSTATUS`
/// constants; the real crate has the same names as hand-written `i32` constants.
fn ntstatus(include: &Path, out: &Path) {
    let header = include.join("ntstatus.h");
    println!("cargo::rerun-if-changed={}", header.display());
    let text =
        fs::read_to_string(&header).unwrap_or_else(|e| panic!("read {}: {e}", header.display()));
    let mut rust = String::from("// Generated from mingw-w64's ntstatus.h by build.rs.\n");
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#define ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if !name.starts_with("STATUS_") || !seen.insert(name.to_owned()) {
            continue;
        }
        let digits = value
            .trim_start_matches("((NTSTATUS)")
            .trim_end_matches(')')
            .trim_end_matches(['L', 'l']);
        let parsed = match digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => digits.parse::<u32>().ok(),
        };
        if let Some(v) = parsed {
            // Same bits as the C cast to a 32-bit signed NTSTATUS.
            rust.push_str(&format!(
                "pub const {name}: NTSTATUS = {}_i32;\n",
                i32::from_ne_bytes(v.to_ne_bytes())
            ));
        }
    }
    fs::write(out.join("ntstatus.rs"), rust).expect("write ntstatus.rs");
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (is the tool installed?)"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// The link-search directory: what the WDK's `km/x64` library directory gives the real
/// build, as far as iosv needs it.
fn link_dir(out: &Path, manifest: &Path) -> PathBuf {
    let mingw_lib = env_path("IOSV_MINGW_LIB", "/usr/x86_64-w64-mingw32/lib");
    let clang = env_tool("IOSV_CLANG", "clang");
    let llvm_lib = env_tool("IOSV_LLVM_LIB", "llvm-lib");
    let dlltool = env_tool("IOSV_LLVM_DLLTOOL", "llvm-dlltool");
    let dir = out.join("lib");
    fs::create_dir_all(&dir).expect("create lib dir");

    // mingw's import libraries under the names the link directives use; lld-link reads
    // GNU archives.
    for (name, archive) in [("ntoskrnl.lib", "libntoskrnl.a"), ("hal.lib", "libhal.a")] {
        let src = mingw_lib.join(archive);
        println!("cargo::rerun-if-changed={}", src.display());
        fs::copy(&src, dir.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e} (mingw-w64-x86-64-dev)", src.display()));
    }

    // Import library for the hand-declared ntoskrnl routines.
    let def = manifest.join("declared.def");
    println!("cargo::rerun-if-changed={}", def.display());
    run(Command::new(&dlltool)
        .args(["-m", "i386:x86-64", "-d"])
        .arg(&def)
        .arg("-l")
        .arg(dir.join("iosv_declared_ntoskrnl.lib")));

    // Stand-ins for the WDK's static libraries.
    for (lib, source) in [
        ("aux_klib.lib", "aux_klib_standin.c"),
        ("wdmsec.lib", "wdmsec_standin.c"),
    ] {
        let src = manifest.join("wdk-libs").join(source);
        println!("cargo::rerun-if-changed={}", src.display());
        let obj = out.join(source).with_extension("obj");
        run(Command::new(&clang)
            .args([
                "--driver-mode=cl",
                "--target=x86_64-pc-windows-msvc",
                "/nologo",
                "/c",
                "/O1",
                "/GS-",
                "/Zl",
            ])
            .arg(format!("/Fo{}", obj.display()))
            // In cl mode an absolute Unix path would read as an option.
            .arg("--")
            .arg(&src));
        run(Command::new(&llvm_lib)
            .arg("/nologo")
            .arg(format!("/out:{}", dir.join(lib).display()))
            .arg(&obj));
    }
    dir
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let include = env_path("IOSV_MINGW_INCLUDE", "/usr/share/mingw-w64/include");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    assert!(
        include.join("ddk/ntifs.h").is_file(),
        "{}/ddk/ntifs.h not found: install mingw-w64-x86-64-dev",
        include.display()
    );

    // The link directives the real wdk-sys writes into ntddk.rs for WDM (minus
    // BufferOverflowFastFailK and wmilib, which have no Linux counterpart and nothing iosv
    // uses; see docs/windows.md, "What is checked on Linux").
    let links = concat!(
        "#[link(name = \"ntoskrnl\", kind = \"static\", modifiers = \"-bundle\")]\n",
        "unsafe extern \"C\" {}\n",
        "#[link(name = \"hal\", kind = \"static\", modifiers = \"-bundle\")]\n",
        "unsafe extern \"C\" {}\n",
    );
    let clang = env_tool("IOSV_CLANG", "clang");
    let resource_dir = Command::new(&clang)
        .arg("-print-resource-dir")
        .output()
        .unwrap_or_else(|e| panic!("run {clang}: {e} (install clang)"));
    let resource_dir = String::from_utf8_lossy(&resource_dir.stdout)
        .trim()
        .to_owned();
    let headers = (include.as_path(), resource_dir.as_str());
    generate(headers, &out, "types.rs", CodegenConfig::TYPES, None);
    generate(headers, &out, "constants.rs", CodegenConfig::VARS, None);
    generate(
        headers,
        &out,
        "ntddk.rs",
        (CodegenConfig::TYPES | CodegenConfig::VARS).complement(),
        Some(links),
    );
    ntstatus(&include, &out);

    let dir = link_dir(&out, &manifest);
    // Propagated by cargo to every crate that depends on wdk-sys (iosv bundles aux_klib
    // from here) and to the final link.
    println!("cargo::rustc-link-search=native={}", dir.display());
}
